/*-------------------------------------------------------------------------
 *
 * sha256.h
 *	  SHA-256 digests (OpenSSL's EVP with the digest fetched once, see sha256.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_SHA256_H
#define MAESTER_SHA256_H

extern void maester_sha256_hex(const char *const *parts, const int *lens,
							   int nparts, char *hex_out);
extern void maester_sha256(const char *const *parts, const int *lens, int nparts,
						   uint8 *digest);

#endif							/* MAESTER_SHA256_H */

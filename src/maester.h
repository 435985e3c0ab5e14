/*-------------------------------------------------------------------------
 *
 * maester.h
 *	  Declarations shared by the modules of the maester extension.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_H
#define MAESTER_H

/* longest prompt, version or label name, in characters */
#define MAESTER_NAME_MAXLEN 200

/* hex digits of a SHA-256 digest, without the terminating NUL */
#define MAESTER_SHA256_HEXLEN 64

/* sha256.c */
extern void maester_sha256_hex(const char *const *parts, const int *lens,
							   int nparts, char *hex_out);

/* registry.c */
extern void maester_registry_init(void);

#endif							/* MAESTER_H */

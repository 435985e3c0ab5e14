/*-------------------------------------------------------------------------
 *
 * sha256.c
 *	  SHA-256 digests: OpenSSL's EVP interface with the digest fetched once,
 *	  or PostgreSQL's cryptohash API in a server built without OpenSSL.
 *
 * Prompt rendering hashes every prompt it renders, so the cost of setting
 * up a digest matters more than the hashing of a short text.
 *
 * - PostgreSQL's cryptohash API (pg_cryptohash_init) initialises its EVP
 *   context with EVP_sha256(), and OpenSSL 3 looks that digest up again in
 *   its provider registry at every init (an implicit fetch, under locks):
 *   about three quarters of a render's time.  OpenSSL 3 documents explicit
 *   fetching as the fix (crypto(7), "Performance"): with OpenSSL (USE_OPENSSL,
 *   as Debian's server is built) the digest is fetched once per backend
 *   with EVP_MD_fetch and every init reuses it.
 * - Either way one context per backend is made on first use and
 *   re-initialised for every digest: creating one allocates, and a
 *   cryptohash context also registers with the current resource owner (so
 *   it is made under a resource owner of its own that is never released).
 *   The context is never used re-entrantly: nothing between init and final
 *   can call back into here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#ifdef USE_OPENSSL
#include <openssl/err.h>
#include <openssl/evp.h>
#else
#include "common/cryptohash.h"
#include "utils/resowner.h"
#endif
#include "common/sha2.h"
#include "utils/builtins.h"

#include "maester.h"
#include "sha256.h"

#ifdef USE_OPENSSL

static EVP_MD_CTX *sha256_ctx = NULL;
static EVP_MD *sha256_md = NULL;

/* An EVP step failed: say OpenSSL's reason, and leave its error queue empty */
static void sha256_failed(const char *what) pg_attribute_noreturn();

static void
sha256_failed(const char *what)
{
	unsigned long e = ERR_get_error();
	const char *reason = e ? ERR_reason_error_string(e) : NULL;

	ERR_clear_error();
	elog(ERROR, "could not %s: %s", what, reason ? reason : "no reason given");
}

/* This backend's context and digest, made on first use */
static EVP_MD_CTX *
get_sha256_ctx(void)
{
	if (sha256_md == NULL)
	{
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
		sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
#else
		sha256_md = (EVP_MD *) EVP_sha256();	/* (no providers to look up) */
#endif
		if (sha256_md == NULL)
			sha256_failed("fetch OpenSSL's SHA-256 digest");
	}
	if (sha256_ctx == NULL)
	{
#if OPENSSL_VERSION_NUMBER >= 0x10100000L
		sha256_ctx = EVP_MD_CTX_new();
#else
		sha256_ctx = EVP_MD_CTX_create();
#endif
		if (sha256_ctx == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory")));
	}
	return sha256_ctx;
}

/* The digest of the concatenation of `parts`, its 32 bytes into `digest` */
void
maester_sha256(const char *const *parts, const int *lens, int nparts, uint8 *digest)
{
	EVP_MD_CTX *ctx = get_sha256_ctx();
	unsigned int len = 0;

	if (EVP_DigestInit_ex(ctx, sha256_md, NULL) != 1)
		sha256_failed("initialize a SHA-256 context");
	for (int i = 0; i < nparts; i++)
		if (EVP_DigestUpdate(ctx, parts[i], (size_t) lens[i]) != 1)
			sha256_failed("update a SHA-256 context");
	if (EVP_DigestFinal_ex(ctx, digest, &len) != 1 || len != PG_SHA256_DIGEST_LENGTH)
		sha256_failed("finalize a SHA-256 context");
}

#else							/* !USE_OPENSSL */

static pg_cryptohash_ctx *sha256_ctx = NULL;

/* Create this backend's long-lived SHA-256 context on first use */
static pg_cryptohash_ctx *
get_sha256_ctx(void)
{
	if (sha256_ctx == NULL)
	{
		static ResourceOwner owner = NULL;
		ResourceOwner save = CurrentResourceOwner;

		if (owner == NULL)
			owner = ResourceOwnerCreate(NULL, "maester sha256");
		CurrentResourceOwner = owner;
		PG_TRY();
		{
			sha256_ctx = pg_cryptohash_create(PG_SHA256);
		}
		PG_FINALLY();
		{
			CurrentResourceOwner = save;
		}
		PG_END_TRY();
		if (sha256_ctx == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory")));
	}
	return sha256_ctx;
}

/* The digest of the concatenation of `parts`, its 32 bytes into `digest` */
void
maester_sha256(const char *const *parts, const int *lens, int nparts, uint8 *digest)
{
	pg_cryptohash_ctx *ctx = get_sha256_ctx();

	if (pg_cryptohash_init(ctx) < 0)
		elog(ERROR, "could not initialize SHA-256 context: %s",
			 pg_cryptohash_error(ctx));
	for (int i = 0; i < nparts; i++)
		if (pg_cryptohash_update(ctx, (const uint8 *) parts[i], lens[i]) < 0)
			elog(ERROR, "could not update SHA-256 context: %s",
				 pg_cryptohash_error(ctx));
	if (pg_cryptohash_final(ctx, digest, PG_SHA256_DIGEST_LENGTH) < 0)
		elog(ERROR, "could not finalize SHA-256 context: %s",
			 pg_cryptohash_error(ctx));
}

#endif							/* USE_OPENSSL */

/*
 * Write the lowercase hex SHA-256 of the concatenation of `parts` (each of
 * `lens[i]` bytes) into `hex_out`, which must hold MAESTER_SHA256_HEXLEN + 1
 * bytes; it is NUL-terminated.
 */
void
maester_sha256_hex(const char *const *parts, const int *lens, int nparts,
				   char *hex_out)
{
	uint8		digest[PG_SHA256_DIGEST_LENGTH];

	maester_sha256(parts, lens, nparts, digest);
	hex_encode((const char *) digest, sizeof(digest), hex_out);
	hex_out[MAESTER_SHA256_HEXLEN] = '\0';
}

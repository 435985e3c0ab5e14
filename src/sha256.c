/*-------------------------------------------------------------------------
 *
 * sha256.c
 *	  SHA-256 hex digests through PostgreSQL's cryptohash API.
 *
 * Creating a cryptohash context allocates (with OpenSSL, an EVP context) and
 * registers it with the current resource owner; doing that per rendered
 * prompt would cost more than the rendering.  So each backend creates one
 * context, once, under a resource owner of its own that is never released,
 * and re-initialises it for every digest.  The context is never used
 * re-entrantly: nothing between init and final can call back into here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/cryptohash.h"
#include "common/sha2.h"
#include "utils/builtins.h"
#include "utils/resowner.h"

#include "maester.h"
#include "sha256.h"

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

/* The same digest, its 32 bytes into `digest` */
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

/*-------------------------------------------------------------------------
 *
 * maester.c
 *	  Entry point of the maester extension: _PG_init.
 *
 * maester is meant to be loaded with shared_preload_libraries (the gateway
 * and ledger need shared memory and a background worker).  The prompt
 * registry also works when the library is loaded on first use.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/guc.h"

#include "maester.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* Module load: register callbacks and reserve the GUC prefix */
void
_PG_init(void)
{
	maester_registry_init();

	MarkGUCPrefixReserved("maester");
}

/*-------------------------------------------------------------------------
 *
 * maester.c
 *	  Entry point of the maester extension: _PG_init, and the shared
 *	  memory hooks.
 *
 * maester must be loaded with shared_preload_libraries: the ledger queues,
 * budgets, circuit breakers and statistics live in shared memory, and the
 * launcher of its background workers is registered at server start.  The
 * prompt registry also works when the library is loaded on first use;
 * gateway calls then fail with 55000 and a hint (maester_require_preload).
 *
 * Shared memory: each module asks for its block and creates it (under
 * AddinShmemInitLock, in its *_shmem_init) with one LWLock tranche of its
 * own; this file only chains the hooks.  Settings are all in settings.c.
 *
 * This is the top of the tree of files: it calls the modules' init
 * functions, and no module calls it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"

#include "budget.h"
#include "catalog.h"
#include "circuit.h"
#include "ledger.h"
#include "meter.h"
#include "registry.h"
#include "router.h"
#include "settings.h"
#include "stat.h"
#include "launcher.h"
#include "tenant.h"
#include "util.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
maester_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(circuit_shmem_size());
	RequestNamedLWLockTranche("maester", 1);
	RequestAddinShmemSpace(ledger_shmem_size());
	RequestNamedLWLockTranche("maester ledger", ledger_lwlocks());
	RequestAddinShmemSpace(budget_shmem_size());
	RequestNamedLWLockTranche("maester budgets", 1);
	RequestAddinShmemSpace(stat_shmem_size());
	RequestNamedLWLockTranche("maester stat", 1);
}

static void
maester_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	circuit_shmem_init();
	ledger_shmem_init();
	budget_shmem_init();
	stat_shmem_init();
	LWLockRelease(AddinShmemInitLock);
	maester_shmem_ready = true;
}

/* Module load: settings, shared memory hooks, cache callbacks */
void
_PG_init(void)
{
	settings_define();

	if (process_shared_preload_libraries_in_progress)
	{
		maester_register_launcher();
		maester_install_utility_hook();

		prev_shmem_request_hook = shmem_request_hook;
		shmem_request_hook = maester_shmem_request;
		prev_shmem_startup_hook = shmem_startup_hook;
		shmem_startup_hook = maester_shmem_startup;
	}

	catalog_init();
	tenant_init();
	registry_init();
	router_init();
	budget_init();
	meter_init();
}

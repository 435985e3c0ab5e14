/*-------------------------------------------------------------------------
 *
 * callback.c
 *	  The callback worker: it runs the callback procedures of jobs that
 *	  ended, as their submitters, apart from the ledger and the jobs.
 *
 * A job's callback (maester.submit(..., callback => ...)) is user code.
 * Run where the ledger is written or jobs run, a slow or failing callback
 * would hold up every other tenant's calls.  So job workers only record
 * that a job ended; the database's callback worker, started by the
 * launcher when callbacks wait (within maester.max_extra_workers), runs
 * them one at a time, oldest first, each in a transaction of its own:
 *	 - as the job's submitting role and tenant, as a restricted operation
 *	   (no temporary objects), with the default search_path and pg_temp
 *	   last; whatever settings it changes are undone;
 *	 - under maester.callback_timeout (a statement timeout);
 *	 - session advisory locks it took are released afterwards, so nothing
 *	   it did outlives it in the session;
 *	 - its error, if any, goes to maester.job.callback_error, and
 *	   callback_done_at says it ran.
 * A callback interrupted by the worker's shutdown runs again later.  The
 * worker exits when no callback has waited for CALLBACK_IDLE_EXIT_MS.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "catalog.h"
#include "launcher.h"
#include "ledger.h"
#include "settings.h"
#include "tenant.h"
#include "util.h"

PGDLLEXPORT void maester_callback_main(Datum arg);

#define CALLBACK_IDLE_EXIT_MS 5000
#define CALLBACK_POLL_MS 500

static LedgerSlot *CallbackSlot = NULL;
static bool IdleExit = false;	/* it exits because nothing waits */
static Oid	WorkerRole = InvalidOid;

/* One callback to run */
typedef struct CallbackRun
{
	int64		job_id;
	Oid			callback;
	Oid			role;
	char	   *tenant;
	const char *sql;
} CallbackRun;

/*
 * The callback, as its submitter: see the header.  Runs in a
 * subtransaction; the timeout is armed around it.
 */
static void
run_callback_fn(void *arg)
{
	CallbackRun *cr = (CallbackRun *) arg;
	int			save_nestlevel = NewGUCNestLevel();

	(void) set_config_option("search_path", "\"$user\", public, pg_temp", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	maester_set_tenant(cr->tenant, GUC_ACTION_SAVE);
	SetUserIdAndSecContext(cr->role, SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	enable_timeout_after(STATEMENT_TIMEOUT, maester_callback_timeout_ms);
	if (SPI_execute(cr->sql, false, 0) < 0)
		elog(ERROR, "could not call %s", cr->sql);
	disable_timeout(STATEMENT_TIMEOUT, false);
	SetUserIdAndSecContext(WorkerRole, 0);
	AtEOXact_GUC(false, save_nestlevel);
}

/*
 * Run the oldest waiting callback, in a transaction of its own; false when
 * none waits.
 */
static bool
run_one(void)
{
	CallbackRun cr;
	bool		isnull;
	bool		found = false;
	char	   *error = NULL;
	MemoryContext oldcxt = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	maester_check_catalog();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT j.id, j.callback, j.role::text, j.tenant FROM maester.job j "
					"WHERE j.callback IS NOT NULL AND j.callback_done_at IS NULL "
					"AND j.status = ANY (ARRAY['done', 'failed', 'cancelled']) "
					"ORDER BY j.id LIMIT 1 FOR UPDATE SKIP LOCKED", false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the waiting callbacks");
	if (SPI_processed == 1)
	{
		HeapTuple	t = SPI_tuptable->vals[0];
		TupleDesc	d = SPI_tuptable->tupdesc;
		char	   *role;

		found = true;
		memset(&cr, 0, sizeof(cr));
		cr.job_id = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
		cr.callback = DatumGetObjectId(SPI_getbinval(t, d, 2, &isnull));
		role = SPI_getvalue(t, d, 3);
		cr.role = get_role_oid(role, true);
		cr.tenant = pstrdup(SPI_getvalue(t, d, 4));
		if (!OidIsValid(cr.role))
			error = psprintf("not called: role \"%s\" no longer exists", role);
		else if (!SearchSysCacheExists1(PROCOID, ObjectIdGetDatum(cr.callback)))
			error = pstrdup("not called: the procedure no longer exists");
		else
		{
			ErrorData  *edata;

			cr.sql = psprintf("CALL %s(%lld::pg_catalog.int8)",
							  quote_qualified_identifier(get_namespace_name(get_func_namespace(cr.callback)),
														 get_func_name(cr.callback)),
							  (long long) cr.job_id);
			pgstat_report_activity(STATE_RUNNING, cr.sql);
			edata = maester_subxact(run_callback_fn, &cr, oldcxt);
			disable_timeout(STATEMENT_TIMEOUT, false);
			SetUserIdAndSecContext(WorkerRole, 0);
			/* nothing the callback did outlives it in the session */
			LockReleaseAll(USER_LOCKMETHOD, true);
			if (edata != NULL)
			{
				/* the worker's own shutdown: the callback runs again later */
				if (ShutdownRequestPending)
					ReThrowError(edata);
				error = edata->message;
			}
		}
		{
			Datum		v[2] = {Int64GetDatum(cr.job_id), (Datum) 0};
			Oid			types[2] = {INT8OID, TEXTOID};
			char		nulls[2] = {' ', error ? ' ' : 'n'};

			if (error)
			{
				v[1] = CStringGetTextDatum(error);
				ereport(LOG,
						(errmsg("maester job %lld: its callback failed: %s", (long long) cr.job_id, error)));
			}
			if (SPI_execute_with_args("UPDATE maester.job SET callback_done_at = pg_catalog.clock_timestamp(), "
									  "callback_error = $2 WHERE id = $1",
									  2, types, v, nulls, false, 0) != SPI_OK_UPDATE)
				elog(ERROR, "could not record a callback");
		}
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(oldcxt);
	pgstat_report_activity(STATE_IDLE, NULL);
	return found;
}

static void
callback_exit(int code, Datum arg)
{
	if (CallbackSlot == NULL)
		return;
	LWLockAcquire(CallbackSlot->lock, LW_EXCLUSIVE);
	if (CallbackSlot->callback_pid == MyProcPid)
	{
		CallbackSlot->callback_pid = 0;
		/* stopped (or failed) with callbacks maybe waiting: a successor runs them */
		if (!IdleExit)
			CallbackSlot->callbacks_wanted = true;
	}
	LWLockRelease(CallbackSlot->lock);
	wake_launcher();
}

/* The callback worker's main */
void
maester_callback_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	LedgerSlot *slot;
	bool		taken = false;
	TimestampTz idle_since;

	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	if (!maester_worker_wait_catalog("callback worker", NULL) || (slot = slot_find(MyDatabaseId)) == NULL)
		proc_exit(0);
	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	if (slot->callback_pid == 0)
	{
		slot->callback_pid = MyProcPid;
		slot->callbacks_wanted = false;
		taken = true;
	}
	LWLockRelease(slot->lock);
	if (!taken)
		proc_exit(0);
	CallbackSlot = slot;
	before_shmem_exit(callback_exit, (Datum) 0);
	WorkerRole = GetUserId();
	SetConfigOption("application_name", "maester callback worker", PGC_USERSET, PGC_S_OVERRIDE);
	/* the worker's own queries resolve nothing through a user's schema */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION);

	idle_since = GetCurrentTimestamp();
	PG_TRY();
	{
		pqsignal(SIGTERM, maester_worker_sigterm);
		while (!ShutdownRequestPending)
		{
			if (ConfigReloadPending)
			{
				ConfigReloadPending = false;
				ProcessConfigFile(PGC_SIGHUP);
			}
			if (run_one())
			{
				idle_since = GetCurrentTimestamp();
				CHECK_FOR_INTERRUPTS();
				continue;
			}
			if (TimestampDifferenceExceeds(idle_since, GetCurrentTimestamp(), CALLBACK_IDLE_EXIT_MS))
			{
				IdleExit = true;
				break;
			}
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 CALLBACK_POLL_MS, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}
	PG_CATCH();
	{
		maester_worker_exit_after_error("maester callback worker");
	}
	PG_END_TRY();
	proc_exit(0);
}

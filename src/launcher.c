/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher of maester's background workers, the registry of the
 *	  databases that use maester, and the hook that lets DROP DATABASE and
 *	  ALTER DATABASE ... RENAME run while those workers are connected.
 *
 * The launcher is a static background worker (registered in _PG_init, so
 * only with shared_preload_libraries).  For every database with a slot
 * (ledger.c) it keeps one resident worker running (resident.c); it starts
 * the job workers, the callback worker and the knowledge worker (kb.c) asked for,
 * within maester.max_extra_workers over the whole server; it frees the
 * slot of a database that is gone, or that turned out to have no maester.
 *
 * Which databases use maester.  A database gets a slot at the commit of
 * CREATE EXTENSION maester or ALTER EXTENSION maester UPDATE (the utility
 * hook below), or when one of its backends first calls the gateway; the
 * launcher then starts its resident worker and, once the worker has found
 * the extension, records the database in the registry file
 * pg_stat/maester_databases (one OID a line, replaced atomically).  At
 * server start, the launcher gives a slot to every database in the
 * registry, so that their workers recover orphaned ledger rows and run
 * queued jobs without waiting for a call; no worker is ever started in a
 * database that never used maester.
 *
 * When a worker cannot be started (no free background worker slot), the
 * launcher records why in the slot, and a backend waiting for the ledger
 * fails at once saying so, instead of after maester.ledger_timeout_ms.
 *
 * Commands that need a database without connections -- DROP DATABASE,
 * ALTER DATABASE ... RENAME TO and ... SET TABLESPACE, and CREATE
 * DATABASE ... TEMPLATE -- first mark the database's slot as stopping (the
 * launcher then starts nothing for it), stop its workers and wait for them
 * to exit (maester_utility_hook, like TimescaleDB's loader does); if the
 * database still exists afterwards, its workers start again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>
#include <unistd.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/utility.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "budget.h"
#include "catalog.h"
#include "circuit.h"
#include "launcher.h"
#include "ledger.h"
#include "settings.h"
#include "stat.h"
#include "walledger.h"

#define REGISTRY_FILE "pg_stat/maester_databases"
/* how long a command waits for a database's workers to exit */
#define STOP_WAIT_MS 10000

PGDLLEXPORT void maester_launcher_main(Datum arg);

/* Register the launcher; called from _PG_init while preloading */
void
maester_register_launcher(void)
{
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = 1;
	strlcpy(bgw.bgw_library_name, "maester", BGW_MAXLEN);
	strlcpy(bgw.bgw_function_name, "maester_launcher_main", BGW_MAXLEN);
	strlcpy(bgw.bgw_name, "maester launcher", BGW_MAXLEN);
	strlcpy(bgw.bgw_type, "maester launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&bgw);
}

/* The kinds of workers the launcher starts for a database */
typedef enum WorkerKind
{
	WK_RESIDENT,
	WK_JOBS,
	WK_CALLBACKS,
	WK_KB
} WorkerKind;

static const char *const worker_function[] = {"maester_resident_main", "maester_job_main",
"maester_callback_main", "maester_kb_main"};
static const char *const worker_type[] = {"maester worker", "maester job worker",
"maester callback worker", "maester knowledge worker"};

/* A worker the launcher started */
typedef struct LaunchedWorker
{
	Oid			dboid;
	WorkerKind	kind;
	int			index;			/* job workers: their number */
	BackgroundWorkerHandle *handle;
} LaunchedWorker;

static LaunchedWorker *launched = NULL;
static int	nlaunched = 0;
static int	maxlaunched = 0;
static List *registry = NIL;	/* OIDs of the databases known to use maester */

/* Forget the workers that have exited; how many on-demand ones still run */
static int
reap_workers(void)
{
	int			extra = 0;

	for (int i = 0; i < nlaunched; i++)
	{
		pid_t		pid;

		if (GetBackgroundWorkerPid(launched[i].handle, &pid) == BGWH_STOPPED)
		{
			pfree(launched[i].handle);
			launched[i--] = launched[--nlaunched];
			continue;
		}
		if (launched[i].kind != WK_RESIDENT)
			extra++;
	}
	return extra;
}

/* Is a worker of this kind (and number) for `dboid` running, or starting? */
static bool
worker_running(Oid dboid, WorkerKind kind, int index)
{
	for (int i = 0; i < nlaunched; i++)
		if (launched[i].dboid == dboid && launched[i].kind == kind &&
			launched[i].index == index)
			return true;
	return false;
}

/* Start a worker; on failure say why in the slot, for waiting backends */
static bool
start_worker(LedgerSlot *slot, Oid dboid, WorkerKind kind, int index)
{
	BackgroundWorker bgw;
	BackgroundWorkerHandle *handle;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(bgw.bgw_library_name, "maester", BGW_MAXLEN);
	strlcpy(bgw.bgw_function_name, worker_function[kind], BGW_MAXLEN);
	if (kind == WK_JOBS)
		snprintf(bgw.bgw_name, BGW_MAXLEN, "%s %d for database %u", worker_type[kind], index, dboid);
	else
		snprintf(bgw.bgw_name, BGW_MAXLEN, "%s for database %u", worker_type[kind], dboid);
	memcpy(bgw.bgw_extra, &index, sizeof(index));
	strlcpy(bgw.bgw_type, worker_type[kind], BGW_MAXLEN);
	bgw.bgw_main_arg = ObjectIdGetDatum(dboid);
	bgw.bgw_notify_pid = MyProcPid;
	if (!RegisterDynamicBackgroundWorker(&bgw, &handle))
	{
		if (kind == WK_RESIDENT)
		{
			bool		first;

			LWLockAcquire(slot->lock, LW_EXCLUSIVE);
			first = slot->start_error[0] == '\0';
			snprintf(slot->start_error, sizeof(slot->start_error),
					 "no background worker slot is free for the maester worker of this database (max_worker_processes = %d)",
					 max_worker_processes);
			slot->start_error_at = GetCurrentTimestamp();
			LWLockRelease(slot->lock);
			if (first)
				ereport(LOG,
						(errmsg("maester launcher could not start the %s for database %u",
								worker_type[kind], dboid),
						 errhint("Raise max_worker_processes (maester needs the launcher, one worker per database that uses it, and up to maester.max_extra_workers more).")));
		}
		else
		{
			/* an on-demand worker waits for a free slot: say so, once a minute */
			static TimestampTz last_said = 0;

			if (TimestampDifferenceExceeds(last_said, GetCurrentTimestamp(), 60000))
			{
				last_said = GetCurrentTimestamp();
				ereport(LOG,
						(errmsg("maester launcher could not start the %s for database %u: no background worker slot is free (max_worker_processes = %d)",
								worker_type[kind], dboid, max_worker_processes),
						 errhint("Raise max_worker_processes; the launcher tries again.")));
			}
		}
		return false;
	}
	if (nlaunched == maxlaunched)
	{
		maxlaunched = Max(16, maxlaunched * 2);
		launched = launched ? repalloc(launched, sizeof(LaunchedWorker) * maxlaunched)
			: palloc(sizeof(LaunchedWorker) * maxlaunched);
	}
	launched[nlaunched].dboid = dboid;
	launched[nlaunched].kind = kind;
	launched[nlaunched].index = index;
	launched[nlaunched].handle = handle;
	nlaunched++;
	return true;
}

/* The databases that accept connections */
static List *
list_databases(void)
{
	List	   *result = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	MemoryContext cxt = CurrentMemoryContext;

	StartTransactionCommand();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (db->datallowconn)
		{
			MemoryContext old = MemoryContextSwitchTo(cxt);

			result = lappend_oid(result, db->oid);
			MemoryContextSwitchTo(old);
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return result;
}

/* Read the registry file (missing: empty) */
static List *
registry_read(void)
{
	List	   *result = NIL;
	FILE	   *f = AllocateFile(REGISTRY_FILE, "r");
	unsigned int oid;

	if (f == NULL)
		return NIL;
	while (fscanf(f, "%u", &oid) == 1)
		result = lappend_oid(result, (Oid) oid);
	FreeFile(f);
	return result;
}

/* Replace the registry file with `dbs`, atomically and durably */
static void
registry_write(List *dbs)
{
	const char *tmp = REGISTRY_FILE ".tmp";
	FILE	   *f = AllocateFile(tmp, "w");
	ListCell   *lc;

	if (f == NULL)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("maester launcher could not write \"%s\": %m", tmp)));
		return;
	}
	foreach(lc, dbs)
		fprintf(f, "%u\n", lfirst_oid(lc));
	if (FreeFile(f) != 0)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("maester launcher could not write \"%s\": %m", tmp)));
		return;
	}
	(void) durable_rename(tmp, REGISTRY_FILE, LOG);
}

static void
launcher_exit(int code, Datum arg)
{
	ledger_shared->launcher_latch = NULL;
	ledger_shared->launcher_pid = 0;
}

/* What the launcher reads of a slot, under its lock */
typedef struct SlotView
{
	Oid			dboid;
	bool		ready;
	bool		no_extension;
	bool		has_extension;
	bool		stopping;
	bool		has_worker;
	int			jobs_wanted;
	bool		callbacks_wanted;
	bool		kb_wanted;
} SlotView;

static SlotView
view_slot(LedgerSlot *slot)
{
	SlotView	v;

	LWLockAcquire(slot->lock, LW_SHARED);
	v.dboid = slot->dboid;
	v.ready = slot->ready;
	v.no_extension = slot->no_extension;
	v.has_extension = slot->has_extension;
	v.stopping = slot->stopping;
	v.has_worker = slot->worker_pid != 0;
	v.jobs_wanted = slot->jobs_wanted;
	v.callbacks_wanted = slot->callbacks_wanted;
	v.kb_wanted = slot->kb_wanted && slot->kb_pid == 0;
	LWLockRelease(slot->lock);
	return v;
}

/* One look at every slot: see the header */
static void
launcher_pass(void)
{
	List	   *dbs = NIL;
	bool		listed = false;
	bool		registry_changed = false;
	int			extra = reap_workers();

	for (int i = 0; i < ledger_shared->nslots; i++)
	{
		LedgerSlot *slot = ledger_slot(i);
		SlotView	v = view_slot(slot);

		if (!OidIsValid(v.dboid))
			continue;
		if (!listed)
		{
			dbs = list_databases();
			listed = true;
		}
		if (!list_member_oid(dbs, v.dboid) || v.no_extension)
		{
			/* gone, or no maester there: give the slot back */
			if (list_member_oid(registry, v.dboid))
			{
				registry = list_delete_oid(registry, v.dboid);
				registry_changed = true;
			}
			if (slot_free(slot, v.dboid))
			{
				/* and its budget counters, circuits and statistics */
				budget_forget_database(v.dboid);
				circuit_forget_database(v.dboid);
				stat_forget_database(v.dboid);
				/* and its replication slot, which would keep WAL forever */
				wal_ledger_drop(v.dboid);
				ereport(LOG,
						(errmsg("maester launcher freed the slot of database %u, %s",
								v.dboid, v.no_extension ? "which has no maester" : "which is gone")));
			}
			continue;
		}
		if (v.stopping)
			continue;
		if (v.has_extension && !list_member_oid(registry, v.dboid))
		{
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			registry = lappend_oid(registry, v.dboid);
			MemoryContextSwitchTo(old);
			registry_changed = true;
		}
		if (!v.has_worker && !worker_running(v.dboid, WK_RESIDENT, 0))
			(void) start_worker(slot, v.dboid, WK_RESIDENT, 0);
		if (!v.ready)
			continue;
		for (int j = 1; j < Min(v.jobs_wanted, maester_job_workers); j++)
			if (!worker_running(v.dboid, WK_JOBS, j) && extra < maester_max_extra_workers &&
				start_worker(slot, v.dboid, WK_JOBS, j))
				extra++;
		if (v.callbacks_wanted && !worker_running(v.dboid, WK_CALLBACKS, 0) &&
			extra < maester_max_extra_workers &&
			start_worker(slot, v.dboid, WK_CALLBACKS, 0))
			extra++;
		if (v.kb_wanted && !worker_running(v.dboid, WK_KB, 0) &&
			extra < maester_max_extra_workers &&
			start_worker(slot, v.dboid, WK_KB, 0))
			extra++;
	}
	/* ledger slots of databases that are gone (walledger.c) */
	{
		List	   *slot_dbs = wal_ledger_idle_slot_dbs();
		ListCell   *lc;

		if (slot_dbs != NIL && !listed)
			dbs = list_databases();
		foreach(lc, slot_dbs)
		{
			if (!list_member_oid(dbs, lfirst_oid(lc)))
				wal_ledger_drop(lfirst_oid(lc));
		}
		list_free(slot_dbs);
	}
	list_free(dbs);
	if (registry_changed)
		registry_write(registry);
}

/* The launcher's main loop */
void
maester_launcher_main(Datum arg)
{
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	ledger_shared->launcher_pid = MyProcPid;
	ledger_shared->launcher_latch = &MyProc->procLatch;
	before_shmem_exit(launcher_exit, (Datum) 0);

	/* the databases known to use maester get their slots (and workers) */
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
		List	   *dbs = list_databases();
		List	   *known = registry_read();
		ListCell   *lc;

		foreach(lc, known)
		{
			Oid			dboid = lfirst_oid(lc);

			if (!list_member_oid(dbs, dboid))
				continue;
			if (slot_claim(dboid) == NULL)
				ereport(LOG,
						(errmsg("maester launcher: no free slot for database %u", dboid),
						 errhint("Raise maester.max_databases.")));
			registry = lappend_oid(registry, dboid);
		}
		if (list_length(registry) != list_length(known))
			registry_write(registry);
		MemoryContextSwitchTo(old);
	}

	while (!ShutdownRequestPending)
	{
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		launcher_pass();
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	/* exit code 1: the postmaster restarts us (unless it is shutting down) */
	proc_exit(1);
}

/*
 * Wait until this library serves the database's catalog (catalog.c): a
 * worker started between the installation of a new version and ALTER
 * EXTENSION maester UPDATE waits for the update (saying so once in the
 * log) instead of writing rows of another shape.  False when the database
 * has no maester or the worker is asked to stop.
 */
bool
maester_worker_wait_catalog(const char *who, LedgerSlot *slot)
{
	bool		logged = false;

	for (;;)
	{
		char	   *why = NULL;
		bool		exists;
		bool		served = false;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		StartTransactionCommand();
		exists = OidIsValid(get_extension_oid("maester", true));
		if (exists)
			served = maester_catalog_served(&why);
		if (exists && slot != NULL && !slot->has_extension)
		{
			LWLockAcquire(slot->lock, LW_EXCLUSIVE);
			slot->has_extension = true;
			LWLockRelease(slot->lock);
			wake_launcher();
		}
		if (exists && !served && !logged)
			ereport(LOG,
					(errmsg("maester %s for database %u waits: %s", who, MyDatabaseId, why),
					 errhint("Run ALTER EXTENSION maester UPDATE in the database.")));
		CommitTransactionCommand();
		if (served)
			return true;
		if (!exists || ShutdownRequestPending)
			return false;
		logged = true;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* ---------------------------------------------------------------------
 * Commands that need a database without connections
 * ---------------------------------------------------------------------
 */

static ProcessUtility_hook_type prev_utility_hook = NULL;
static bool claim_at_commit = false;	/* CREATE/ALTER EXTENSION maester ran */

/*
 * At the commit of CREATE EXTENSION maester (or an UPDATE), the database
 * takes its slot, so that its worker starts now -- recovering, running
 * queued jobs, recorded in the registry -- rather than at the first call.
 */
static void
claim_xact_callback(XactEvent event, void *arg)
{
	if (!claim_at_commit)
		return;
	if (event == XACT_EVENT_COMMIT)
	{
		claim_at_commit = false;
		if (slot_claim(MyDatabaseId) != NULL)
			wake_launcher();
	}
	else if (event == XACT_EVENT_ABORT)
		claim_at_commit = false;
}

/* Is this CREATE EXTENSION maester or ALTER EXTENSION maester UPDATE? */
static bool
creates_maester(Node *stmt)
{
	if (IsA(stmt, CreateExtensionStmt))
		return strcmp(((CreateExtensionStmt *) stmt)->extname, "maester") == 0;
	if (IsA(stmt, AlterExtensionStmt))
		return strcmp(((AlterExtensionStmt *) stmt)->extname, "maester") == 0;
	return false;
}

/* The template of CREATE DATABASE (template1 unless it says otherwise) */
static char *
template_of(List *options)
{
	ListCell   *lc;

	foreach(lc, options)
	{
		DefElem    *d = (DefElem *) lfirst(lc);

		if (strcmp(d->defname, "template") == 0 && d->arg != NULL)
			return defGetString(d);
	}
	return "template1";
}

/* Does this ALTER DATABASE move the database (SET TABLESPACE)? */
static bool
moves_tablespace(List *options)
{
	ListCell   *lc;

	foreach(lc, options)
		if (strcmp(((DefElem *) lfirst(lc))->defname, "tablespace") == 0)
			return true;
	return false;
}

/* The database a command needs without connections, or NULL */
static char *
database_to_free(Node *stmt)
{
	switch (nodeTag(stmt))
	{
		case T_DropdbStmt:
			return ((DropdbStmt *) stmt)->dbname;
		case T_RenameStmt:
			if (((RenameStmt *) stmt)->renameType == OBJECT_DATABASE)
				return ((RenameStmt *) stmt)->subname;
			return NULL;
		case T_CreatedbStmt:
			return template_of(((CreatedbStmt *) stmt)->options);
		case T_AlterDatabaseStmt:
			if (moves_tablespace(((AlterDatabaseStmt *) stmt)->options))
				return ((AlterDatabaseStmt *) stmt)->dbname;
			return NULL;
		default:
			return NULL;
	}
}

/* Mark the slot stopping (or not), and signal its workers to exit */
static void
stop_workers(LedgerSlot *slot, bool stop)
{
	pid_t		pids[MAESTER_MAX_JOB_WORKERS + 3];
	int			n = 0;

	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	slot->stopping = stop;
	if (stop)
	{
		if (slot->worker_pid)
			pids[n++] = slot->worker_pid;
		if (slot->callback_pid)
			pids[n++] = slot->callback_pid;
		if (slot->kb_pid)
			pids[n++] = slot->kb_pid;
		for (int j = 0; j < MAESTER_MAX_JOB_WORKERS; j++)
			if (slot->job_pid[j])
				pids[n++] = slot->job_pid[j];
	}
	LWLockRelease(slot->lock);
	for (int i = 0; i < n; i++)
		(void) kill(pids[i], SIGTERM);
	if (!stop)
		wake_launcher();
}

/* Have all the slot's workers exited? */
static bool
workers_gone(LedgerSlot *slot)
{
	bool		gone;

	LWLockAcquire(slot->lock, LW_SHARED);
	gone = slot->worker_pid == 0 && slot->callback_pid == 0 && slot->kb_pid == 0;
	for (int j = 0; j < MAESTER_MAX_JOB_WORKERS; j++)
		gone &= slot->job_pid[j] == 0;
	LWLockRelease(slot->lock);
	return gone;
}

/*
 * ProcessUtility hook: before a command that needs a database without
 * connections, stop that database's maester workers (see the header).
 */
static void
maester_utility_hook(PlannedStmt *pstmt, const char *queryString,
					 bool readOnlyTree, ProcessUtilityContext context,
					 ParamListInfo params, QueryEnvironment *queryEnv,
					 DestReceiver *dest, QueryCompletion *qc)
{
	char	   *dbname = ledger_shared ? database_to_free(pstmt->utilityStmt) : NULL;
	Oid			dboid = dbname ? get_database_oid(dbname, true) : InvalidOid;
	LedgerSlot *slot = OidIsValid(dboid) && dboid != MyDatabaseId ? slot_find(dboid) : NULL;

	if (slot != NULL)
	{
		TimestampTz start = GetCurrentTimestamp();

		stop_workers(slot, true);
		while (!workers_gone(slot) &&
			   !TimestampDifferenceExceeds(start, GetCurrentTimestamp(), STOP_WAIT_MS))
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 10, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
	}
	PG_TRY();
	{
		if (prev_utility_hook)
			prev_utility_hook(pstmt, queryString, readOnlyTree, context, params,
							  queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
									queryEnv, dest, qc);
	}
	PG_FINALLY();
	{
		/* the database is still there (renamed, copied, or the command failed) */
		if (slot != NULL)
			stop_workers(slot, false);
	}
	PG_END_TRY();

	if (ledger_shared != NULL && creates_maester(pstmt->utilityStmt))
	{
		static bool registered = false;

		if (!registered)
		{
			RegisterXactCallback(claim_xact_callback, NULL);
			registered = true;
		}
		claim_at_commit = true;
	}
}

/* Install the hook; called from _PG_init while preloading */
void
maester_install_utility_hook(void)
{
	prev_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = maester_utility_hook;
}

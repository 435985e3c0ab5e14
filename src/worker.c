/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The ledger launcher and the per-database ledger workers.
 *
 * The launcher is a static background worker (registered in _PG_init, so
 * only with shared_preload_libraries).  It starts one dynamic ledger
 * worker per database that needs one and restarts a worker that exits:
 *	 - every database that accepts connections, at launcher start and every
 *	   LAUNCHER_SCAN_SECS, so that after a crash or restart the databases
 *	   with the extension recover their orphaned rows without waiting for a
 *	   call (a worker for a database without the extension exits at once);
 *	 - at once, every database whose ledger slot a backend has claimed
 *	   (backends set the launcher's latch).
 * No setting beyond shared_preload_libraries is needed for this.
 *
 * A ledger worker connects to its database, claims the database's slot,
 * turns stale PENDING rows into 'orphaned' ones (their backend is gone:
 * another server life, or a dead pid), says it is ready, and then loops:
 * take what is queued, write it in one transaction with synchronous commit
 * (INSERT for PENDING, UPDATE for SETTLE; both idempotent, so records
 * written before a crash of the worker and taken again are not counted
 * twice), advance durable_seq, and set the latches of the waiting
 * backends.  It never holds a transaction open while waiting.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"


#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"
#include "utils/wait_event.h"

#include "catalog.h"
#include "ledger.h"
#include "settings.h"
#include "worker.h"

#define LAUNCHER_SCAN_SECS 30
#define WORKER_BATCH 256
#define SPAN_BATCH 1024			/* at most the span ring (maester.ledger_queue_size) */

PGDLLEXPORT void maester_launcher_main(Datum arg);
PGDLLEXPORT void maester_ledger_main(Datum arg);
PGDLLEXPORT void maester_otlp_main(Datum arg);
PGDLLEXPORT void maester_span_main(Datum arg);
PGDLLEXPORT void maester_job_main(Datum arg);

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

/* The workers the launcher starts per database */
typedef enum WorkerKind
{
	WK_LEDGER,
	WK_SPANS,
	WK_OTLP,
	WK_JOBS
} WorkerKind;

static const char *const worker_function[] = {"maester_ledger_main", "maester_span_main", "maester_otlp_main", "maester_job_main"};
static const char *const worker_type[] = {"maester ledger worker", "maester span writer", "maester OTLP exporter", "maester job worker"};

/* Launcher state: a worker handle per database and kind it started */
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

/* Is a worker of this kind for `dboid` running (or starting)? */
static bool
worker_running(Oid dboid, WorkerKind kind, int index)
{
	for (int i = 0; i < nlaunched; i++)
	{
		pid_t		pid;

		if (launched[i].dboid != dboid || launched[i].kind != kind ||
			launched[i].index != index)
			continue;
		if (GetBackgroundWorkerPid(launched[i].handle, &pid) != BGWH_STOPPED)
			return true;
		/* stopped: forget it */
		pfree(launched[i].handle);
		launched[i] = launched[--nlaunched];
		return false;
	}
	return false;
}

/* Start a worker of this kind (and number) for `dboid` unless one runs */
static void
start_worker_n(Oid dboid, WorkerKind kind, int index)
{
	BackgroundWorker bgw;
	BackgroundWorkerHandle *handle;

	if (worker_running(dboid, kind, index))
		return;
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
		ereport(LOG,
				(errmsg("maester launcher could not start the %s for database %u",
						worker_type[kind], dboid),
				 errhint("Raise max_worker_processes.")));
		return;
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
}

static void
start_worker(Oid dboid, WorkerKind kind)
{
	start_worker_n(dboid, kind, 0);
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

		if (db->datallowconn && !db->datistemplate)
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

/*
 * The database of `slot` is gone (dropped, or no longer accepting
 * connections): once none of its workers runs, the slot is free for
 * another database.  What its queues held is discarded with it.
 */
static void
free_slot(LedgerSlot *slot, Oid dboid)
{
	LWLock	   *lock = slot->lock;
	bool		idle;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	idle = slot->worker_pid == 0 && slot->span_pid == 0 && slot->exporter_pid == 0;

	for (int j = 0; j < MAESTER_MAX_JOB_WORKERS; j++)
		idle &= slot->job_pid[j] == 0;
	if (slot->dboid == dboid && idle)
	{
		memset(slot, 0, sizeof(LedgerSlot));
		slot->lock = lock;
		ereport(LOG,
				(errmsg("maester launcher freed the ledger slot of database %u, which is gone",
						dboid)));
	}
	LWLockRelease(lock);
}

static void
launcher_exit(int code, Datum arg)
{
	ledger_shared->launcher_latch = NULL;
	ledger_shared->launcher_pid = 0;
}

/* The launcher's main loop */
void
maester_launcher_main(Datum arg)
{
	TimestampTz last_scan = 0;

	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	ledger_shared->launcher_pid = MyProcPid;
	ledger_shared->launcher_latch = &MyProc->procLatch;
	before_shmem_exit(launcher_exit, (Datum) 0);

	while (!ShutdownRequestPending)
	{
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		/*
		 * Databases a backend asked for, and databases with a live slot.
		 * The slots are read before the list of databases is, so that a
		 * slot's database, created before it was claimed, is on the list
		 * unless it was dropped since.
		 */
		{
			Oid		   *dboids = palloc(sizeof(Oid) * ledger_shared->nslots);
			List	   *dbs = NIL;
			bool		listed = false;

			for (int i = 0; i < ledger_shared->nslots; i++)
			{
				LedgerSlot *slot = ledger_slot(i);

				LWLockAcquire(slot->lock, LW_SHARED);
				dboids[i] = slot->dboid;
				LWLockRelease(slot->lock);
			}
			for (int i = 0; i < ledger_shared->nslots; i++)
			{
				if (!OidIsValid(dboids[i]))
					continue;
				if (!listed)
				{
					dbs = list_databases();
					listed = true;
				}
				if (!list_member_oid(dbs, dboids[i]))
				{
					free_slot(ledger_slot(i), dboids[i]);
					continue;
				}
				start_worker(dboids[i], WK_LEDGER);
				start_worker(dboids[i], WK_SPANS);
				if (maester_otlp_endpoint[0] != '\0')
					start_worker(dboids[i], WK_OTLP);
				for (int j = 0; j < maester_job_workers; j++)
					start_worker_n(dboids[i], WK_JOBS, j);
			}
			list_free(dbs);
			pfree(dboids);
		}

		/* every database, now and then */
		if (TimestampDifferenceExceeds(last_scan, GetCurrentTimestamp(),
									   LAUNCHER_SCAN_SECS * 1000))
		{
			List	   *dbs = list_databases();
			ListCell   *lc;

			foreach(lc, dbs)
				start_worker(lfirst_oid(lc), WK_LEDGER);
			list_free(dbs);
			last_scan = GetCurrentTimestamp();
		}

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	/* exit code 1: the postmaster restarts us (unless it is shutting down) */
	proc_exit(1);
}

static LedgerSlot *WorkerSlot = NULL;

/* On exit: the slot has no worker any more; waiting backends notice */
static void
worker_exit(int code, Datum arg)
{
	if (WorkerSlot == NULL)
		return;
	LWLockAcquire(WorkerSlot->lock, LW_EXCLUSIVE);
	if (WorkerSlot->worker_pid == MyProcPid)
	{
		WorkerSlot->worker_pid = 0;
		WorkerSlot->worker_latch = NULL;
		WorkerSlot->ready = false;
	}
	LWLockRelease(WorkerSlot->lock);
	if (ledger_shared->launcher_latch)
		SetLatch(ledger_shared->launcher_latch);
}

/* Claim the slot of this database; false when another worker has it */
static bool
claim_slot(void)
{
	LedgerSlot *found = NULL;

	for (int i = 0; i < ledger_shared->nslots && found == NULL; i++)
	{
		LedgerSlot *slot = ledger_slot(i);

		LWLockAcquire(slot->lock, LW_EXCLUSIVE);
		if (slot->dboid == MyDatabaseId || slot->dboid == InvalidOid)
		{
			if (slot->worker_pid != 0 && slot->worker_pid != MyProcPid)
			{
				LWLockRelease(slot->lock);
				return false;
			}
			slot->dboid = MyDatabaseId;
			slot->worker_pid = MyProcPid;
			slot->worker_latch = &MyProc->procLatch;
			slot->ready = false;
			found = slot;
		}
		LWLockRelease(slot->lock);
	}
	if (found == NULL)
	{
		ereport(LOG,
				(errmsg("maester ledger worker: no free slot for database %u", MyDatabaseId),
				 errhint("Raise maester.max_databases.")));
		return false;
	}
	WorkerSlot = found;
	return true;
}

/*
 * Turn stale PENDING rows into 'orphaned' ones charged at their estimate:
 * rows of another server life, or of a backend that is gone.
 */
static void
recover_orphans(void)
{
	StringInfoData sql;
	int			rc;
	SPITupleTable *pending;
	uint64		npending;

	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT u.request_id, u.attempt, u.backend_pid, u.server_epoch "
					 "FROM maester.usage u WHERE u.status OPERATOR(pg_catalog.=) 'pending'");
	rc = SPI_execute(sql.data, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read pending ledger rows");
	/* keep the result: the UPDATEs below replace SPI_tuptable */
	pending = SPI_tuptable;
	npending = SPI_processed;
	for (uint64 i = 0; i < npending; i++)
	{
		HeapTuple	t = pending->vals[i];
		TupleDesc	d = pending->tupdesc;
		bool		isnull;
		int32		pid = DatumGetInt32(SPI_getbinval(t, d, 3, &isnull));
		int64		epoch = DatumGetInt64(SPI_getbinval(t, d, 4, &isnull));
		Datum		args[2];
		Oid			types[2] = {UUIDOID, INT4OID};

		if (epoch == ledger_shared->epoch && BackendPidGetProc(pid) != NULL)
			continue;			/* its backend still runs: it will settle */
		args[0] = SPI_getbinval(t, d, 1, &isnull);
		args[1] = SPI_getbinval(t, d, 2, &isnull);
		rc = SPI_execute_with_args("UPDATE maester.usage SET status = 'orphaned', "
								   "cost_usd = estimated_cost_usd, settled_at = pg_catalog.now() "
								   "WHERE request_id OPERATOR(pg_catalog.=) $1 "
								   "AND attempt OPERATOR(pg_catalog.=) $2 "
								   "AND status OPERATOR(pg_catalog.=) 'pending'",
								   2, types, args, NULL, false, 0);
		if (rc != SPI_OK_UPDATE)
			elog(ERROR, "could not mark an orphaned ledger row");
		if (SPI_processed > 0)
			ereport(LOG,
					(errmsg("maester: ledger row of a call by a backend that is gone marked orphaned"),
					 errdetail("Backend %d; it is charged at its estimated cost.", pid)));
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

static SPIPlanPtr InsertPlan = NULL;
static SPIPlanPtr SettlePlan = NULL;
static SPIPlanPtr SpanPlan = NULL;

#define NULL_IF_EMPTY(s) ((s)[0] == '\0')

/* Write one record through SPI (in the worker's batch transaction) */
static void
write_record(LedgerRecord *r)
{
	Datum		v[28];
	char		n[28];
	int			rc;

	memset(n, ' ', sizeof(n));
	if (InsertPlan == NULL)
	{
		Oid			t[22] = {UUIDOID, INT4OID, TIMESTAMPTZOID, TEXTOID, TEXTOID,
			TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
		TEXTOID, TEXTOID, TEXTOID, INT4OID, INT8OID, TEXTOID, TEXTOID, TEXTOID,
		INT8OID, BOOLOID, TEXTOID, TEXTOID};
		Oid			st[19] = {UUIDOID, INT4OID, TEXTOID, TEXTOID, TEXTOID,
			INT8OID, INT8OID, INT8OID, INT8OID, BOOLOID, TEXTOID, BOOLOID,
		FLOAT8OID, INT4OID, TIMESTAMPTZOID, BOOLOID, BOOLOID, TEXTOID, FLOAT8OID};

		InsertPlan = SPI_prepare(
			"INSERT INTO maester.usage (request_id, attempt, ts, tenant, role, trace_id, "
			" prompt_name, prompt_version, prompt_hash, provider, requested_model, model, "
			" status, backend_pid, server_epoch, estimated_cost_usd, purpose, tags, "
			" max_tokens, priced, error_class, cost_usd) "
			"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, "
			" $16::pg_catalog.numeric, $17, $18::pg_catalog.jsonb, $19, $20, $21, $22::pg_catalog.numeric) "
			"ON CONFLICT (request_id, attempt) DO NOTHING", 22, t);
		if (InsertPlan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(InsertPlan);
		SettlePlan = SPI_prepare(
			"UPDATE maester.usage SET status = $3, error_class = $4, model = COALESCE($5, model), "
			" input_tokens = $6, output_tokens = $7, cached_input_tokens = $8, "
			" cache_write_tokens = $9, usage_estimated = $10, "
			" cost_usd = CASE WHEN $12 THEN $11::pg_catalog.numeric ELSE estimated_cost_usd END, "
			" priced = priced AND $16, latency_ms = $13, http_status = $14, settled_at = $15, "
			" fallback_used = $17, eval_status = $18, eval_score = $19 "
			"WHERE request_id OPERATOR(pg_catalog.=) $1 AND attempt OPERATOR(pg_catalog.=) $2",
			19, st);
		if (SettlePlan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(SettlePlan);
	}

	if (r->kind == LEDGER_PENDING)
	{
		v[0] = UUIDPGetDatum(&r->request_id);
		v[1] = Int32GetDatum(r->attempt);
		v[2] = TimestampTzGetDatum(r->ts);
		v[3] = CStringGetTextDatum(r->tenant);
		v[4] = CStringGetTextDatum(r->role);
		v[5] = CStringGetTextDatum(r->trace_id);
		v[6] = CStringGetTextDatum(r->prompt_name);
		n[6] = NULL_IF_EMPTY(r->prompt_name) ? 'n' : ' ';
		v[7] = CStringGetTextDatum(r->prompt_version);
		n[7] = NULL_IF_EMPTY(r->prompt_version) ? 'n' : ' ';
		v[8] = CStringGetTextDatum(r->prompt_hash);
		v[9] = CStringGetTextDatum(r->provider);
		v[10] = CStringGetTextDatum(r->requested_model);
		n[10] = NULL_IF_EMPTY(r->requested_model) ? 'n' : ' ';
		v[11] = CStringGetTextDatum(r->model);
		v[12] = CStringGetTextDatum(r->status);
		v[13] = Int32GetDatum(r->backend_pid);
		v[14] = Int64GetDatum(r->epoch);
		v[15] = CStringGetTextDatum(r->estimate);
		n[15] = NULL_IF_EMPTY(r->estimate) ? 'n' : ' ';
		v[16] = CStringGetTextDatum(r->purpose);
		v[17] = CStringGetTextDatum(r->tags);
		n[17] = NULL_IF_EMPTY(r->tags) ? 'n' : ' ';
		v[18] = Int64GetDatum(r->max_tokens);
		v[19] = BoolGetDatum(r->priced);
		v[20] = CStringGetTextDatum(r->error_class);
		n[20] = NULL_IF_EMPTY(r->error_class) ? 'n' : ' ';
		v[21] = CStringGetTextDatum(r->cost);
		n[21] = NULL_IF_EMPTY(r->cost) ? 'n' : ' ';
		rc = SPI_execute_plan(InsertPlan, v, n, false, 0);
		if (rc != SPI_OK_INSERT)
			elog(ERROR, "could not write a ledger row: %s", SPI_result_code_string(rc));
	}
	else
	{
		v[0] = UUIDPGetDatum(&r->request_id);
		v[1] = Int32GetDatum(r->attempt);
		v[2] = CStringGetTextDatum(r->status);
		v[3] = CStringGetTextDatum(r->error_class);
		n[3] = NULL_IF_EMPTY(r->error_class) ? 'n' : ' ';
		v[4] = CStringGetTextDatum(r->model);
		n[4] = NULL_IF_EMPTY(r->model) ? 'n' : ' ';
		v[5] = Int64GetDatum(r->input_tokens);
		v[6] = Int64GetDatum(r->output_tokens);
		v[7] = Int64GetDatum(r->cached_input_tokens);
		v[8] = Int64GetDatum(r->cache_write_tokens);
		n[5] = n[6] = n[7] = n[8] = r->has_usage ? ' ' : 'n';
		v[9] = BoolGetDatum(r->usage_estimated);
		v[10] = CStringGetTextDatum(r->cost);
		n[10] = NULL_IF_EMPTY(r->cost) ? 'n' : ' ';
		v[11] = BoolGetDatum(!NULL_IF_EMPTY(r->cost) || r->has_usage);
		v[12] = Float8GetDatum(r->latency_ms);
		v[13] = Int32GetDatum(r->http_status);
		n[13] = r->http_status ? ' ' : 'n';
		v[14] = TimestampTzGetDatum(r->settled_at);
		v[15] = BoolGetDatum(r->priced);
		v[16] = BoolGetDatum(r->fallback_used);
		v[17] = CStringGetTextDatum(r->eval_status);
		n[17] = NULL_IF_EMPTY(r->eval_status) ? 'n' : ' ';
		v[18] = Float8GetDatum(r->eval_score);
		n[18] = NULL_IF_EMPTY(r->eval_status) ? 'n' : ' ';
		rc = SPI_execute_plan(SettlePlan, v, n, false, 0);
		if (rc != SPI_OK_UPDATE)
			elog(ERROR, "could not settle a ledger row: %s", SPI_result_code_string(rc));
	}
}

/*
 * Write the span records of a batch in their own transaction, with
 * synchronous_commit off (nobody waits for spans).  A span that cannot be
 * written must not stop the ledger: on an error the batch's spans are
 * dropped with a WARNING.
 */
static void
write_spans(LedgerRecord *batch, int n, MemoryContext cxt)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);

	PG_TRY();
	{
		Datum	   *cols[10];
		bool	   *nulls[10];
		Oid			elemtypes[10] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID,
		INT8OID, TEXTOID, TEXTOID, TEXTOID, UUIDOID};
		Oid			arraytypes[10] = {TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
			TIMESTAMPTZARRAYOID, INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		UUIDARRAYOID};
		Datum		args[10];
		int			k = 0;
		int			rc;

		for (int c = 0; c < 10; c++)
		{
			cols[c] = palloc(sizeof(Datum) * n);
			nulls[c] = palloc0(sizeof(bool) * n);
		}
		for (int i = 0; i < n; i++)
		{
			LedgerRecord *r = &batch[i];
			pg_uuid_t  *u;

			if (r->kind != LEDGER_SPAN)
				continue;
			cols[0][k] = CStringGetTextDatum(r->trace_id);
			cols[1][k] = CStringGetTextDatum(r->span_id);
			cols[2][k] = CStringGetTextDatum(r->parent_span_id);
			nulls[2][k] = r->parent_span_id[0] == '\0';
			cols[3][k] = CStringGetTextDatum(r->span_name);
			cols[4][k] = TimestampTzGetDatum(r->ts);
			cols[5][k] = Int64GetDatum(r->duration_us);
			cols[6][k] = CStringGetTextDatum(r->status);
			cols[7][k] = CStringGetTextDatum(r->attrs[0] ? r->attrs : "{}");
			cols[8][k] = CStringGetTextDatum(r->tenant);
			u = palloc(sizeof(pg_uuid_t));
			*u = r->request_id;
			cols[9][k] = UUIDPGetDatum(u);
			nulls[9][k] = !r->has_request_id;
			k++;
		}
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		maester_check_catalog();
		/* (type lookups need the transaction) */
		for (int c = 0; c < 10; c++)
		{
			int			dims[1] = {k};
			int			lbs[1] = {1};
			int16		typlen;
			bool		typbyval;
			char		typalign;

			get_typlenbyvalalign(elemtypes[c], &typlen, &typbyval, &typalign);
			args[c] = PointerGetDatum(construct_md_array(cols[c], nulls[c], 1, dims, lbs,
														 elemtypes[c], typlen, typbyval, typalign));
		}
		(void) set_config_option("synchronous_commit", "off", PGC_SUSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		if (SpanPlan == NULL)
		{
			SpanPlan = SPI_prepare(
				"INSERT INTO maester.span (trace_id, span_id, parent_span_id, name, started_at, "
				" duration_us, status, attributes, tenant, request_id) "
				"SELECT s.t, s.s, s.p, s.n, s.st, s.d, s.stat, s.a::pg_catalog.jsonb, s.ten, s.r "
				"FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), "
				"  pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6), "
				"  pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9), "
				"  pg_catalog.unnest($10)) AS s(t, s, p, n, st, d, stat, a, ten, r) "
				"ON CONFLICT (trace_id, span_id) DO NOTHING", 10, arraytypes);
			if (SpanPlan == NULL)
				elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
			SPI_keepplan(SpanPlan);
		}
		rc = SPI_execute_plan(SpanPlan, args, NULL, false, 0);
		if (rc != SPI_OK_INSERT)
			elog(ERROR, "could not write spans: %s", SPI_result_code_string(rc));
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		SpanPlan = NULL;		/* it may be half-made; prepare it again */
		ereport(WARNING,
				(errmsg("maester ledger worker dropped the spans of a batch: %s", edata->message)));
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
}

/*
 * One round of a worker's loop: handle interrupts and reloads, then copy up
 * to `max` waiting records of the ledger ring (or the span ring) into
 * `batch`; *tail is where they start.  Returns how many.
 */
static int
take_batch(bool spans, LedgerRecord *batch, int max, uint64 *tail)
{
	int			n = 0;
	int			qsize = ledger_shared->queue_size;
	LedgerRecord *ring = spans ? span_ring(WorkerSlot) : ledger_ring(WorkerSlot);
	uint64		head;

	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
	LWLockAcquire(WorkerSlot->lock, LW_SHARED);
	*tail = spans ? WorkerSlot->span_tail : WorkerSlot->tail;
	head = spans ? WorkerSlot->span_head : WorkerSlot->head;
	LWLockRelease(WorkerSlot->lock);

	/*
	 * Copied without the lock: backends write only beyond head, and not
	 * over [tail, head) until this worker advances tail; the lock taken
	 * above orders their writes before our reads.  (Holding the lock for a
	 * ring's worth of copying would stall every call of the database.)
	 */
	while (n < max && *tail + n < head)
	{
		memcpy(&batch[n], &ring[(*tail + n) % qsize], sizeof(LedgerRecord));
		n++;
	}
	return n;
}

/*
 * Wait until this library serves the database's catalog (catalog.c): a
 * worker started between the installation of a new version and ALTER
 * EXTENSION maester UPDATE waits for the update (saying so once in the
 * log) instead of writing rows of another shape.  False when the database
 * has no maester or the worker is asked to stop.
 */
bool
maester_worker_wait_catalog(const char *who)
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

/* A ledger worker's main loop */
void
maester_ledger_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	LedgerRecord *batch;
	MemoryContext batchcxt;

	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);

	if (!maester_worker_wait_catalog("ledger worker"))
		proc_exit(0);			/* nothing to do here */

	/* the ledger's commits are durable, whatever the server's default */
	SetConfigOption("synchronous_commit", "on", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("application_name", "maester ledger worker", PGC_USERSET, PGC_S_OVERRIDE);

	before_shmem_exit(worker_exit, (Datum) 0);
	if (!claim_slot())
		proc_exit(0);

	pgstat_report_activity(STATE_RUNNING, "recovering orphaned ledger rows");
	recover_orphans();

	LWLockAcquire(WorkerSlot->lock, LW_EXCLUSIVE);
	WorkerSlot->ready = true;
	LWLockRelease(WorkerSlot->lock);
	ereport(LOG, (errmsg("maester ledger worker ready for database %u", dboid)));

	batch = palloc(sizeof(LedgerRecord) * WORKER_BATCH);
	batchcxt = AllocSetContextCreate(TopMemoryContext, "maester ledger batch",
									 ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		uint64		tail;
		int			n = take_batch(false, batch, WORKER_BATCH, &tail);

		if (n == 0)
		{
			if (ShutdownRequestPending)
				break;
			pgstat_report_activity(STATE_IDLE, NULL);
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 1000, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			continue;
		}

		pgstat_report_activity(STATE_RUNNING, "writing ledger rows");
		MemoryContextReset(batchcxt);
		{
			MemoryContext old = MemoryContextSwitchTo(batchcxt);

			/* the ledger rows, with a durable commit (the catalog must be ours) */
			SetCurrentStatementStartTimestamp();
			StartTransactionCommand();
			maester_check_catalog();
			SPI_connect();
			PushActiveSnapshot(GetTransactionSnapshot());
			for (int i = 0; i < n; i++)
			{
				if (batch[i].kind != LEDGER_SPAN)	/* (spans have their ring) */
					write_record(&batch[i]);
			}
			SPI_finish();
			PopActiveSnapshot();
			CommitTransactionCommand();
			MemoryContextSwitchTo(old);
		}

		/* durable: tell whoever waits */
		LWLockAcquire(WorkerSlot->lock, LW_EXCLUSIVE);
		WorkerSlot->durable_seq = batch[n - 1].seq;
		LWLockRelease(WorkerSlot->lock);
		for (int i = 0; i < n; i++)
		{
			if (batch[i].procno < 0 || batch[i].procno >= (int) ProcGlobal->allProcCount)
				continue;
			SetLatch(&ProcGlobal->allProcs[batch[i].procno].procLatch);
		}

		LWLockAcquire(WorkerSlot->lock, LW_EXCLUSIVE);
		WorkerSlot->tail = tail + n;
		WorkerSlot->written += n;
		LWLockRelease(WorkerSlot->lock);
	}
	proc_exit(0);
}

/* On exit: the slot has no span writer any more */
static void
span_writer_exit(int code, Datum arg)
{
	if (WorkerSlot == NULL)
		return;
	LWLockAcquire(WorkerSlot->lock, LW_EXCLUSIVE);
	if (WorkerSlot->span_pid == MyProcPid)
	{
		WorkerSlot->span_pid = 0;
		WorkerSlot->span_latch = NULL;
	}
	LWLockRelease(WorkerSlot->lock);
}

/*
 * Let spans gather for SPAN_NAP_MS, or until the queue is half full, so
 * that the spans of many calls go in one insert.
 */
static void
gather_spans(void)
{
	TimestampTz start = GetCurrentTimestamp();

	for (;;)
	{
		long		left = SPAN_NAP_MS -
			(long) (TimestampDifferenceMilliseconds(start, GetCurrentTimestamp()));
		uint64		queued;

		if (left <= 0 || ShutdownRequestPending)
			return;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 left, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		LWLockAcquire(WorkerSlot->lock, LW_SHARED);
		queued = WorkerSlot->span_head - WorkerSlot->span_tail;
		LWLockRelease(WorkerSlot->lock);
		if (queued >= (uint64) ledger_shared->queue_size / 2)
			return;
	}
}

/*
 * The span writer of a database: takes what waits in the slot's span ring
 * (everything, up to SPAN_BATCH) and writes it in one insert without
 * waiting for a flush.  A process of its own, so that ledger rows never
 * wait behind spans; under load its batches grow and each span costs less.
 */
void
maester_span_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	LedgerRecord *batch;
	MemoryContext batchcxt;
	bool		taken = false;

	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	SetConfigOption("application_name", "maester span writer", PGC_USERSET, PGC_S_OVERRIDE);

	if (!maester_worker_wait_catalog("span writer"))
		proc_exit(0);


	for (int i = 0; i < ledger_shared->nslots && !taken; i++)
	{
		LedgerSlot *slot = ledger_slot(i);

		LWLockAcquire(slot->lock, LW_EXCLUSIVE);
		if (slot->dboid == MyDatabaseId && slot->span_pid == 0)
		{
			slot->span_pid = MyProcPid;
			slot->span_latch = &MyProc->procLatch;
			WorkerSlot = slot;
			taken = true;
		}
		LWLockRelease(slot->lock);
	}
	if (!taken)
		proc_exit(0);			/* no slot, or another writer has it */
	before_shmem_exit(span_writer_exit, (Datum) 0);

	batch = MemoryContextAllocHuge(TopMemoryContext, sizeof(LedgerRecord) * SPAN_BATCH);
	batchcxt = AllocSetContextCreate(TopMemoryContext, "maester span batch",
									 ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		uint64		tail;
		int			n = take_batch(true, batch, SPAN_BATCH, &tail);
		int			qsize = ledger_shared->queue_size;

		if (n == 0)
		{
			if (ShutdownRequestPending)
				break;
			pgstat_report_activity(STATE_IDLE, NULL);
			/* until the first span comes */
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 1000, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			if (ShutdownRequestPending)
				continue;		/* take what is there, then exit */
		}
		else
		{
			pgstat_report_activity(STATE_RUNNING, "writing spans");
			MemoryContextReset(batchcxt);
			write_spans(batch, n, batchcxt);

			LWLockAcquire(WorkerSlot->lock, LW_EXCLUSIVE);
			WorkerSlot->span_tail = tail + n;
			LWLockRelease(WorkerSlot->lock);
			if (n >= qsize / 2)
				continue;		/* a backlog: no nap */
		}
		gather_spans();
	}
	proc_exit(0);
}


/*-------------------------------------------------------------------------
 *
 * resident.c
 *	  The resident worker of a database that uses maester: it writes the
 *	  usage ledger, writes the spans, runs jobs and exports spans, in one
 *	  latch-driven loop.
 *
 * One process per database (started by the launcher, launcher.c), so that
 * many databases fit in max_worker_processes.  Its loop is the call
 * machine's driver (run_calls, machine.c) running the database's jobs
 * (job.c); at the start of every round, and after every move of a job's
 * call, it does its own work, in this order:
 *	 1. the ledger first: whatever is queued is written in one transaction
 *	    with synchronous commit (group commit); INSERT for PENDING, UPDATE
 *	    for SETTLE, both idempotent, so records written before a crash and
 *	    taken again are not counted twice; then durable_seq advances and
 *	    the waiting backends' latches are set.  A batch that fails is
 *	    written again record by record, each in a subtransaction; a record
 *	    that still fails goes to maester.dead_letter with its error (and a
 *	    LOG line, and a counter in maester.worker_status), and the worker
 *	    goes on: one bad record never stops the ledger;
 *	 2. spans, when due, a chunk at a time (spanwrite.c); a chunk stops
 *	    between its inserts when a ledger record waits, so that a record
 *	    waits behind one insert of spans, not a whole chunk;
 *	 3. the OTLP export, one post at a time on the same curl handle
 *	    (export.c);
 *	 4. now and then: stale PENDING rows become 'orphaned' (charged at
 *	    their estimate: their backend is gone, in this or an earlier server
 *	    life), and running jobs of job workers that are gone are released.
 * It never holds a transaction open while waiting, and waits on its latch
 * (set by backends queueing records and spans and submitting jobs), on
 * curl's sockets and on its timers.
 *
 * It writes the ledger whatever the jobs do: user code (job callbacks) runs
 * in the callback worker, never here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
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
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"
#include "utils/wait_event.h"

#include "call.h"
#include "catalog.h"
#include "export.h"
#include "job.h"
#include "launcher.h"
#include "ledger.h"
#include "settings.h"
#include "spanwrite.h"
#include "util.h"
#include "walledger.h"

PGDLLEXPORT void maester_resident_main(Datum arg);

#define WORKER_BATCH 256
#define ORPHAN_CHECK_MS 10000
#define CACHE_PURGE_MS 60000
#define CACHE_PURGE_ROWS 10000

static LedgerSlot *WorkerSlot = NULL;

/*
 * Turn stale PENDING rows into 'orphaned' ones charged at their estimate:
 * rows of another server life, or of a backend that is gone.
 */
/* One orphaned row to mark */
typedef struct Orphan
{
	Datum		args[2];
	uint64		marked;
} Orphan;

static void
mark_orphan_fn(void *arg)
{
	Orphan	   *o = (Orphan *) arg;
	Oid			types[2] = {UUIDOID, INT4OID};

	if (SPI_execute_with_args("UPDATE maester.usage SET status = 'orphaned', "
							  "cost_usd = estimated_cost_usd, settled_at = pg_catalog.now() "
							  "WHERE request_id OPERATOR(pg_catalog.=) $1 "
							  "AND attempt OPERATOR(pg_catalog.=) $2 "
							  "AND status OPERATOR(pg_catalog.=) 'pending'",
							  2, types, o->args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not mark an orphaned ledger row");
	o->marked = SPI_processed;
}

static void
purge_fn(void *arg)
{
	/* never wait: a user's lock (its own DELETE in an open transaction) must not stall the ledger */
	if (SPI_execute("SELECT pg_catalog.set_config('lock_timeout', '100ms', true)", false, 0) != SPI_OK_SELECT ||
		SPI_execute("DELETE FROM maester.response_cache c WHERE c.ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
					"SELECT e.ctid FROM maester.response_cache e "
					"WHERE e.expires_at OPERATOR(pg_catalog.<) pg_catalog.now() LIMIT " CppAsString2(CACHE_PURGE_ROWS) " "
					"FOR UPDATE SKIP LOCKED))",
					false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not delete expired response cache entries");
	*(uint64 *) arg = SPI_processed;
}

/*
 * Delete expired response cache entries (respcache.c), at most
 * CACHE_PURGE_ROWS a time, every CACHE_PURGE_MS: lookups never return
 * them, this keeps the table from growing with keys never asked again.
 * This loop writes the ledger, so it never waits for anyone: rows another
 * transaction has locked are skipped, and a table lock gives way after
 * 100 ms.  A failure is a LOG line; the worker goes on.
 */
static void
purge_expired_cache(void)
{
	uint64		n = 0;
	ErrorData  *edata;
	MemoryContext cxt = CurrentMemoryContext;

	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	edata = maester_subxact(purge_fn, &n, cxt);
	if (edata != NULL)
	{
		maester_rethrow_if_worker_error(edata);
		ereport(LOG,
				(errmsg("maester worker could not delete expired response cache entries: %s",
						edata->message)));
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	if (n > 0)
		elog(DEBUG1, "maester: deleted " UINT64_FORMAT " expired response cache entries", n);
}

/*
 * Mark the PENDING rows whose backend is gone (or of an earlier server
 * run) orphaned, charged at their estimate.  At start and every
 * ORPHAN_CHECK_MS; each row in a subtransaction, so that one row a
 * constraint refuses is logged and the others are still marked.
 */
static void
recover_orphans(void)
{
	int			rc;
	SPITupleTable *pending;
	uint64		npending;
	MemoryContext cxt = CurrentMemoryContext;

	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	rc = SPI_execute("SELECT u.request_id, u.attempt, u.backend_pid, u.server_epoch "
					 "FROM maester.usage u WHERE u.status OPERATOR(pg_catalog.=) 'pending'",
					 true, 0);
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
		Orphan		o;
		ErrorData  *edata;

		if (epoch == ledger_shared->epoch && BackendPidGetProc(pid) != NULL)
			continue;			/* its backend still runs: it will settle */
		o.args[0] = SPI_getbinval(t, d, 1, &isnull);
		o.args[1] = SPI_getbinval(t, d, 2, &isnull);
		o.marked = 0;
		edata = maester_subxact(mark_orphan_fn, &o, cxt);
		if (edata != NULL)
		{
			maester_rethrow_if_worker_error(edata);
			ereport(LOG,
					(errmsg("maester worker could not mark an orphaned ledger row of request %s: %s",
							DatumGetCString(DirectFunctionCall1(uuid_out, o.args[0])), edata->message),
					 errdetail("It stays pending; the check is repeated.")));
		}
		else if (o.marked > 0)
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

/* The ledger's two statements, planned once (maester_kept_plan) */
static const char *const InsertSql =
	"INSERT INTO maester.usage (request_id, attempt, ts, tenant, role, trace_id, "
	" prompt_name, prompt_version, prompt_hash, provider, requested_model, model, "
	" status, backend_pid, server_epoch, estimated_cost_usd, purpose, tags, "
	" max_tokens, priced, error_class, cost_usd, model_name, route_strategy, route_reason, "
	" cache, saved_usd) "
	"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, "
	" $16::pg_catalog.numeric, $17, $18::pg_catalog.jsonb, $19, $20, $21, $22::pg_catalog.numeric, $23, "
	" $24, $25, $26, $27::pg_catalog.numeric) "
	"ON CONFLICT (request_id, attempt) DO NOTHING";
static Oid InsertTypes[27] = {UUIDOID, INT4OID, TIMESTAMPTZOID, TEXTOID, TEXTOID,
	TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
	TEXTOID, TEXTOID, TEXTOID, INT4OID, INT8OID, TEXTOID, TEXTOID, TEXTOID,
	INT8OID, BOOLOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};

static const char *const SettleSql =
	"UPDATE maester.usage SET status = $3, error_class = $4, model = COALESCE($5, model), "
	" input_tokens = $6, output_tokens = $7, cached_input_tokens = $8, "
	" cache_write_tokens = $9, usage_estimated = $10, "
	" cost_usd = CASE WHEN $12 THEN $11::pg_catalog.numeric ELSE estimated_cost_usd END, "
	" overrun_usd = CASE WHEN $12 AND $11::pg_catalog.numeric OPERATOR(pg_catalog.>) estimated_cost_usd "
	"   THEN $11::pg_catalog.numeric OPERATOR(pg_catalog.-) estimated_cost_usd END, "
	" priced = priced AND $16, latency_ms = $13, http_status = $14, settled_at = $15, "
	" fallback_used = $17, eval_status = $18, eval_score = $19, "
	" finish_reason = $20, provider_finish_reason = $21, provider_request_id = $22, "
	" reasoning_tokens = $23, cache_write_1h_tokens = $24, service_tier = $25 "
	"WHERE request_id OPERATOR(pg_catalog.=) $1 AND attempt OPERATOR(pg_catalog.=) $2";
static Oid SettleTypes[25] = {UUIDOID, INT4OID, TEXTOID, TEXTOID, TEXTOID,
	INT8OID, INT8OID, INT8OID, INT8OID, BOOLOID, TEXTOID, BOOLOID,
	FLOAT8OID, INT4OID, TIMESTAMPTZOID, BOOLOID, BOOLOID, TEXTOID, FLOAT8OID,
	TEXTOID, TEXTOID, TEXTOID, INT8OID, INT8OID, TEXTOID};

#define NULL_IF_EMPTY(s) ((s)[0] == '\0')

/* Write one record through SPI (in the worker's batch transaction) */
static void
write_record(LedgerRecord *r)
{
	Datum		v[28];
	char		n[28];
	int			rc;

	memset(n, ' ', sizeof(n));
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
		v[22] = CStringGetTextDatum(r->model_name);
		n[22] = NULL_IF_EMPTY(r->model_name) ? 'n' : ' ';
		v[23] = CStringGetTextDatum(r->route_strategy);
		n[23] = NULL_IF_EMPTY(r->route_strategy) ? 'n' : ' ';
		v[24] = CStringGetTextDatum(r->route_reason);
		n[24] = NULL_IF_EMPTY(r->route_reason) ? 'n' : ' ';
		v[25] = CStringGetTextDatum(r->cache);
		n[25] = NULL_IF_EMPTY(r->cache) ? 'n' : ' ';
		v[26] = CStringGetTextDatum(r->saved);
		n[26] = NULL_IF_EMPTY(r->saved) ? 'n' : ' ';
		rc = SPI_execute_plan(maester_kept_plan(&InsertPlan, InsertSql, 27, InsertTypes),
							  v, n, false, 0);
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
		v[19] = CStringGetTextDatum(r->finish_reason);
		n[19] = NULL_IF_EMPTY(r->finish_reason) ? 'n' : ' ';
		v[20] = CStringGetTextDatum(r->provider_finish_reason);
		n[20] = NULL_IF_EMPTY(r->provider_finish_reason) ? 'n' : ' ';
		v[21] = CStringGetTextDatum(r->provider_request_id);
		n[21] = NULL_IF_EMPTY(r->provider_request_id) ? 'n' : ' ';
		v[22] = Int64GetDatum(r->reasoning_tokens);
		v[23] = Int64GetDatum(r->cache_write_1h_tokens);
		n[22] = n[23] = r->has_usage ? ' ' : 'n';
		v[24] = CStringGetTextDatum(r->service_tier);
		n[24] = NULL_IF_EMPTY(r->service_tier) ? 'n' : ' ';
		rc = SPI_execute_plan(maester_kept_plan(&SettlePlan, SettleSql, 25, SettleTypes),
							  v, n, false, 0);
		if (rc != SPI_OK_UPDATE)
			elog(ERROR, "could not settle a ledger row: %s", SPI_result_code_string(rc));
	}
}


/* A record as JSON, for the dead letter table */
static char *
record_json(LedgerRecord *r)
{
	StringInfoData j;
	char		uuid[UUID_LEN * 2 + 5];
	const char *strs[][2] = {
		{"tenant", r->tenant}, {"role", r->role}, {"trace_id", r->trace_id},
		{"prompt_hash", r->prompt_hash}, {"prompt_name", r->prompt_name},
		{"prompt_version", r->prompt_version}, {"provider", r->provider},
		{"requested_model", r->requested_model}, {"model", r->model},
		{"model_name", r->model_name},
		{"status", r->status}, {"error_class", r->error_class}, {"purpose", r->purpose},
		{"finish_reason", r->finish_reason},
		{"provider_finish_reason", r->provider_finish_reason},
		{"provider_request_id", r->provider_request_id}, {"service_tier", r->service_tier},
		{"cost_usd", r->cost}, {"estimated_cost_usd", r->estimate},
		{"tags", r->tags}, {"eval_status", r->eval_status},
		{"route_strategy", r->route_strategy}, {"route_reason", r->route_reason},
		{"cache", r->cache}, {"saved_usd", r->saved}};

	snprintf(uuid, sizeof(uuid),
			 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
			 r->request_id.data[0], r->request_id.data[1], r->request_id.data[2],
			 r->request_id.data[3], r->request_id.data[4], r->request_id.data[5],
			 r->request_id.data[6], r->request_id.data[7], r->request_id.data[8],
			 r->request_id.data[9], r->request_id.data[10], r->request_id.data[11],
			 r->request_id.data[12], r->request_id.data[13], r->request_id.data[14],
			 r->request_id.data[15]);
	initStringInfo(&j);
	appendStringInfo(&j, "{\"kind\": \"%s\", \"request_id\": \"%s\", \"attempt\": %d",
					 r->kind == LEDGER_PENDING ? "pending" : "settle", uuid, r->attempt);
	for (int i = 0; i < lengthof(strs); i++)
	{
		if (strs[i][1][0] == '\0')
			continue;
		appendStringInfo(&j, ", \"%s\": ", strs[i][0]);
		escape_json(&j, strs[i][1]);
	}
	appendStringInfo(&j, ", \"ts\": \"%s\"", timestamptz_to_str(r->ts));
	if (r->settled_at)
		appendStringInfo(&j, ", \"settled_at\": \"%s\"", timestamptz_to_str(r->settled_at));
	if (r->has_usage)
		appendStringInfo(&j, ", \"input_tokens\": " INT64_FORMAT ", \"output_tokens\": " INT64_FORMAT
						 ", \"cached_input_tokens\": " INT64_FORMAT ", \"cache_write_tokens\": " INT64_FORMAT
						 ", \"cache_write_1h_tokens\": " INT64_FORMAT ", \"reasoning_tokens\": " INT64_FORMAT,
						 r->input_tokens, r->output_tokens, r->cached_input_tokens, r->cache_write_tokens,
						 r->cache_write_1h_tokens, r->reasoning_tokens);
	appendStringInfo(&j, ", \"max_tokens\": %d, \"priced\": %s, \"backend_pid\": %d}",
					 r->max_tokens, r->priced ? "true" : "false", r->backend_pid);
	return j.data;
}

/* What write_one needs */
typedef struct OneRecord
{
	LedgerRecord *r;
	ErrorData  *edata;
} OneRecord;

static void
write_one_fn(void *arg)
{
	write_record(((OneRecord *) arg)->r);
}

static void
dead_letter_fn(void *arg)
{
	OneRecord  *o = (OneRecord *) arg;
	Datum		v[7];
	Oid			t[7] = {TEXTOID, UUIDOID, INT4OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};

	v[0] = CStringGetTextDatum(o->r->kind == LEDGER_PENDING ? "pending" : "settle");
	v[1] = UUIDPGetDatum(&o->r->request_id);
	v[2] = Int32GetDatum(o->r->attempt);
	v[3] = CStringGetTextDatum(o->r->tenant);
	v[4] = CStringGetTextDatum(record_json(o->r));
	v[5] = CStringGetTextDatum(unpack_sql_state(o->edata->sqlerrcode));
	v[6] = CStringGetTextDatum(o->edata->message ? o->edata->message : "");
	if (SPI_execute_with_args("INSERT INTO maester.dead_letter (kind, request_id, attempt, tenant, "
							  " record, sqlstate, error) "
							  "VALUES ($1, $2, $3, $4, $5::pg_catalog.jsonb, $6, $7)",
							  7, t, v, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not write a dead letter");
}

/*
 * Are all `n` records durable already, each by its WAL message
 * (walledger.c)?  Then their transaction commits without waiting for a
 * flush; the end of the last message is *msg_end.
 */
static bool
batch_in_wal(LedgerRecord *batch, int n, XLogRecPtr *msg_end)
{
	*msg_end = 0;
	/* no slot of ours keeps their WAL, or the commit must wait for standbys */
	if (!wal_ledger_holding() || wal_ledger_sync_standbys())
		return false;
	for (int i = 0; i < n; i++)
	{
		if (batch[i].lsn == 0)
			return false;
		*msg_end = Max(*msg_end, batch[i].lsn);
	}
	if (n > 0)
		(void) set_config_option("synchronous_commit", "off", PGC_SUSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
	return n > 0;
}

/*
 * Write `n` records, one subtransaction each (after their batch failed):
 * a record that fails goes to the dead letter table.  Returns how many
 * were dead-lettered.
 */
static int
write_one_by_one(LedgerRecord *batch, int n, MemoryContext cxt)
{
	int			dead = 0;
	XLogRecPtr	msg_end;
	bool		in_wal;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	maester_check_catalog();
	in_wal = batch_in_wal(batch, n, &msg_end);
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	for (int i = 0; i < n; i++)
	{
		OneRecord	o = {&batch[i], NULL};
		ErrorData  *edata;

		o.edata = maester_subxact(write_one_fn, &o, cxt);
		if (o.edata == NULL)
			continue;
		maester_rethrow_if_worker_error(o.edata);
		dead++;
		/* its caller must not send: it hears so before durable_seq passes it */
		if (batch[i].kind == LEDGER_PENDING && batch[i].seq != 0)
			ledger_note_dead(WorkerSlot, batch[i].seq);
		ereport(LOG,
				(errmsg("maester worker could not write a ledger record of request %s: %s",
						DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&batch[i].request_id))),
						o.edata->message),
				 errdetail("The record is kept in maester.dead_letter.")));
		edata = maester_subxact(dead_letter_fn, &o, cxt);
		if (edata != NULL)
		{
			maester_rethrow_if_worker_error(edata);
			ereport(LOG,
					(errmsg("maester worker could not keep a ledger record in maester.dead_letter: %s",
							edata->message),
					 errdetail("The record: %s", record_json(&batch[i]))));
		}
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	if (in_wal)
		wal_ledger_applied(XactLastCommitEnd, msg_end);
	return dead;
}

static bool write_batch(LedgerRecord *batch, int n, MemoryContext cxt);

/*
 * Records read back from WAL at start (walledger.c): written as a batch,
 * or one by one when that fails, committed synchronously (they have no
 * `lsn`), before stale PENDING rows are marked orphaned.
 */
static void
replay_apply(LedgerRecord *batch, int n, void *arg)
{
	MemoryContext cxt = (MemoryContext) arg;
	MemoryContext old;

	MemoryContextReset(cxt);
	old = MemoryContextSwitchTo(cxt);
	if (!write_batch(batch, n, cxt))
		(void) write_one_by_one(batch, n, cxt);
	MemoryContextSwitchTo(old);
}

/* Backends make their records durable themselves, or not (walledger.c) */
static void
set_wal_ready(bool ready)
{
	LWLockAcquire(WorkerSlot->lock, LW_EXCLUSIVE);
	WorkerSlot->wal_ready = ready;
	LWLockRelease(WorkerSlot->lock);
}

/* Write `n` records in one transaction; false (nothing written) on an error */
static bool
write_batch(LedgerRecord *batch, int n, MemoryContext cxt)
{
	MemoryContext old = CurrentMemoryContext;
	volatile bool ok = true;

	PG_TRY();
	{
		XLogRecPtr	msg_end;
		bool		in_wal;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		maester_check_catalog();	/* the catalog must be ours */
		in_wal = batch_in_wal(batch, n, &msg_end);
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		for (int i = 0; i < n; i++)
			write_record(&batch[i]);
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		if (in_wal)
			wal_ledger_applied(XactLastCommitEnd, msg_end);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		maester_rethrow_if_worker_error(edata);
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	return ok;
}

/*
 * Write what is queued in the ledger ring (see the header): one batch of
 * up to WORKER_BATCH records, or everything when `all` (on the way out).
 * Returns whether there was anything.  One batch a round, so that under a
 * steady stream of calls the spans still get their chunk between batches.
 */
static bool
write_ledger(MemoryContext cxt, bool all)
{
	static LedgerRecord *batch = NULL;
	bool		wrote = false;

	if (batch == NULL)
		batch = MemoryContextAlloc(TopMemoryContext, sizeof(LedgerRecord) * WORKER_BATCH);
	for (;;)
	{
		uint64		tail;
		int			n = ledger_take(WorkerSlot, batch, WORKER_BATCH, &tail);
		int			dead = 0;
		MemoryContext old;

		if (n == 0)
			return wrote;
		wrote = true;
		pgstat_report_activity(STATE_RUNNING, "writing ledger rows");
		MemoryContextReset(cxt);
		old = MemoryContextSwitchTo(cxt);
		if (!write_batch(batch, n, cxt))
			dead = write_one_by_one(batch, n, cxt);
		MemoryContextSwitchTo(old);

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
		WorkerSlot->written += n - dead;
		WorkerSlot->dead_letters += dead;
		LWLockRelease(WorkerSlot->lock);
		pgstat_report_activity(STATE_IDLE, NULL);
		/* one batch a round: under steady load the spans get their turn */
		if (!all)
			return wrote;
	}
}

/* Is anything waiting in the ledger ring? */
static bool
ledger_waiting(void)
{
	bool		waiting;

	LWLockAcquire(WorkerSlot->lock, LW_SHARED);
	waiting = WorkerSlot->head != WorkerSlot->tail;
	LWLockRelease(WorkerSlot->lock);
	return waiting;
}

/* The resident worker's state beside its jobs */
typedef struct Resident
{
	JobWorker  *jobs;
	CallDriver	jobs_driver;	/* what job.c would do alone */
	Exporter	exporter;
	MemoryContext ledgercxt;
	MemoryContext spancxt;
	TimestampTz next_orphans;
	TimestampTz next_purge;		/* of expired response cache entries */
	long		span_wait;		/* ms until spans are due, -1: none */
	int64		dropped_logged;	/* spans_dropped when last logged */
	Oid			self;			/* the worker's own role */
} Resident;

/*
 * The worker's own identity, for its own work: a job's call moves as its
 * submitter (job.c), and the ledger, the spans and the export are not
 * theirs to write.
 */
static void
as_self(Resident *res)
{
	SetUserIdAndSecContext(res->self, 0);
}

/* Log how many spans were dropped since the last time, if any */
static void
log_dropped(Resident *res)
{
	int64		dropped;

	LWLockAcquire(WorkerSlot->lock, LW_SHARED);
	dropped = WorkerSlot->spans_dropped;
	LWLockRelease(WorkerSlot->lock);
	if (dropped > res->dropped_logged)
		ereport(LOG,
				(errmsg("maester worker for database %u: " INT64_FORMAT " spans dropped (the span queue was full)",
						MyDatabaseId, dropped - res->dropped_logged),
				 errhint("Raise maester.span_queue_size.")));
	res->dropped_logged = dropped;
}

/* Each round of the loop: the worker's own work, then the jobs' */
static bool
resident_round(void *arg)
{
	Resident   *res = (Resident *) arg;
	TimestampTz now;

	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
		/* maester.ledger_wal may have changed: off, rows are written first */
		as_self(res);
		if (!maester_ledger_wal && wal_ledger_holding())
		{
			set_wal_ready(false);
			(void) write_ledger(res->ledgercxt, true);
		}
		set_wal_ready(wal_ledger_start(replay_apply, res->ledgercxt));
	}
	as_self(res);
	(void) write_ledger(res->ledgercxt, false);
	wal_ledger_advance(WorkerSlot);
	/* a chunk of spans stops early when a ledger record waits */
	res->span_wait = spans_write_due(WorkerSlot, false, ledger_waiting, res->spancxt);
	export_step(&res->exporter);
	now = GetCurrentTimestamp();
	if (now >= res->next_orphans)
	{
		recover_orphans();
		jobs_release_orphans(res->jobs);
		log_dropped(res);
		res->next_orphans = now + (TimestampTz) ORPHAN_CHECK_MS * 1000;
	}
	if (now >= res->next_purge)
	{
		purge_expired_cache();
		res->next_purge = now + (TimestampTz) CACHE_PURGE_MS * 1000;
	}
	if (ShutdownRequestPending)
		return true;
	return res->jobs_driver.round(res->jobs_driver.arg);
}

/*
 * After each move of a job's call: only when the ledger ring is half full
 * (a call queueing its record must never wait for room on this very
 * process).  Otherwise the records of all the calls that moved are written
 * together at the next round, one commit -- a commit (and flush) after
 * every move would stall the loop once per call.
 */
static void
resident_after_move(void *arg)
{
	Resident   *res = (Resident *) arg;
	bool		half_full;

	LWLockAcquire(WorkerSlot->lock, LW_SHARED);
	half_full = WorkerSlot->head - WorkerSlot->tail >= (uint64) ledger_shared->queue_size / 2;
	LWLockRelease(WorkerSlot->lock);
	if (half_full)
	{
		as_self(res);
		(void) write_ledger(res->ledgercxt, false);
	}
}

/* Before the loop sleeps: the jobs' work, and how long it may sleep */
static long
resident_idle(void *arg)
{
	Resident   *res = (Resident *) arg;
	long		wait = ORPHAN_CHECK_MS;
	long		w;

	(void) res->jobs_driver.idle(res->jobs_driver.arg);
	if (ledger_waiting())
		return 0;
	if (res->span_wait >= 0)
		wait = Min(wait, res->span_wait);
	w = export_wait_ms(&res->exporter);
	if (w >= 0)
		wait = Min(wait, w);
	w = (long) Max((res->next_orphans - GetCurrentTimestamp()) / 1000, 0);
	return Min(wait, w);
}

static Call *
resident_next(void *arg)
{
	Resident   *res = (Resident *) arg;

	return res->jobs_driver.next(res->jobs_driver.arg);
}

static void
resident_done(Call *c, void *arg)
{
	Resident   *res = (Resident *) arg;

	res->jobs_driver.done(c, res->jobs_driver.arg);
}

static void
resident_enter(Call *c, void *arg)
{
	Resident   *res = (Resident *) arg;

	res->jobs_driver.enter(c, res->jobs_driver.arg);
}

/* On exit: the slot has no worker any more; waiting backends notice */
static void
resident_exit(int code, Datum arg)
{
	if (WorkerSlot == NULL)
		return;
	LWLockAcquire(WorkerSlot->lock, LW_EXCLUSIVE);
	if (WorkerSlot->worker_pid == MyProcPid)
		WorkerSlot->wal_ready = false;
	LWLockRelease(WorkerSlot->lock);
	/* the replication slot is free before the next worker may start */
	wal_ledger_release();
	LWLockAcquire(WorkerSlot->lock, LW_EXCLUSIVE);
	if (WorkerSlot->worker_pid == MyProcPid)
	{
		WorkerSlot->worker_pid = 0;
		WorkerSlot->worker_latch = NULL;
		WorkerSlot->ready = false;
	}
	LWLockRelease(WorkerSlot->lock);
	wake_launcher();
}

/* The resident worker's main */
void
maester_resident_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	LedgerSlot *slot;
	bool		taken = false;
	bool		wal_ready;
	Resident   *res;
	CallDriver	d;

	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	SetConfigOption("application_name", "maester worker", PGC_USERSET, PGC_S_OVERRIDE);

	slot = slot_claim(MyDatabaseId);
	if (slot == NULL)
	{
		ereport(LOG,
				(errmsg("maester worker: no free slot for database %u", MyDatabaseId),
				 errhint("Raise maester.max_databases.")));
		proc_exit(0);
	}
	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	if (slot->worker_pid == 0 || slot->worker_pid == MyProcPid)
	{
		slot->worker_pid = MyProcPid;
		slot->worker_latch = &MyProc->procLatch;
		slot->ready = false;
		taken = true;
	}
	LWLockRelease(slot->lock);
	if (!taken)
		proc_exit(0);			/* another worker serves the database */
	WorkerSlot = slot;
	before_shmem_exit(resident_exit, (Datum) 0);

	if (!maester_worker_wait_catalog("worker", slot))
	{
		if (!ShutdownRequestPending)
		{
			/* no maester here: the launcher gives the slot back */
			LWLockAcquire(slot->lock, LW_EXCLUSIVE);
			slot->no_extension = true;
			LWLockRelease(slot->lock);
		}
		proc_exit(0);
	}

	/* the ledger's commits are durable, whatever the server's default */
	SetConfigOption("synchronous_commit", "on", PGC_SUSET, PGC_S_OVERRIDE);
	/* its own queries resolve nothing through a user's schema */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION);

	res = MemoryContextAllocZero(TopMemoryContext, sizeof(Resident));
	res->self = GetUserId();
	res->ledgercxt = AllocSetContextCreate(TopMemoryContext, "maester ledger batch",
										   ALLOCSET_DEFAULT_SIZES);

	/* what WAL holds that may not be written yet, then the orphans */
	pgstat_report_activity(STATE_RUNNING, "replaying ledger records from WAL");
	wal_ready = wal_ledger_start(replay_apply, res->ledgercxt);
	pgstat_report_activity(STATE_RUNNING, "recovering orphaned ledger rows");
	recover_orphans();

	res->spancxt = AllocSetContextCreate(TopMemoryContext, "maester span batch",
										 ALLOCSET_DEFAULT_SIZES);
	res->next_orphans = GetCurrentTimestamp() + (TimestampTz) ORPHAN_CHECK_MS * 1000;
	res->span_wait = -1;
	export_init(&res->exporter, slot);
	res->jobs = jobs_begin(slot, 0, &res->jobs_driver);

	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	slot->ready = true;
	slot->wal_ready = wal_ready;
	slot->start_error[0] = '\0';
	LWLockRelease(slot->lock);
	wake_launcher();
	ereport(LOG, (errmsg("maester worker ready for database %u", dboid)));

	d = res->jobs_driver;
	d.next = resident_next;
	d.done = resident_done;
	d.enter = resident_enter;
	d.round = resident_round;
	d.idle = resident_idle;
	d.after_move = resident_after_move;
	d.arg = res;

	PG_TRY();
	{
		run_calls(&d);
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		volatile bool stopping;

		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(TopMemoryContext);
		edata = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		stopping = ShutdownRequestPending || edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN;
		if (!stopping)
			ereport(LOG,
					(errmsg("maester worker for database %u failed: %s", dboid, edata->message)));
		export_abort(&res->exporter);
		jobs_end(res->jobs, stopping);
		as_self(res);

		/* what is queued (the jobs' cancelled attempts among it) is written */
		PG_TRY();
		{
			(void) write_ledger(res->ledgercxt, true);
			while (spans_write_due(slot, true, NULL, res->spancxt) == 0)
				;
		}
		PG_CATCH();
		{
			FlushErrorState();
			AbortOutOfAnyTransaction();
		}
		PG_END_TRY();
		RESUME_INTERRUPTS();
		proc_exit(stopping ? 0 : 1);
	}
	PG_END_TRY();
	proc_exit(0);
}

PG_FUNCTION_INFO_V1(worker_status);
/* maester.worker_status(): this database's workers and their counters */
Datum
worker_status(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[11];
	bool		nulls[11];
	LedgerSlot *slot;

	maester_check_catalog();
	maester_require_preload();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	memset(nulls, 0, sizeof(nulls));
	slot = slot_find(MyDatabaseId);
	if (slot == NULL)
	{
		for (int i = 0; i < 11; i++)
			nulls[i] = true;
		values[1] = BoolGetDatum(false);
		nulls[1] = false;
	}
	else
	{
		int			jobs = 0;

		LWLockAcquire(slot->lock, LW_SHARED);
		values[0] = Int32GetDatum(slot->worker_pid);
		nulls[0] = slot->worker_pid == 0;
		values[1] = BoolGetDatum(slot->ready);
		values[2] = Int64GetDatum((int64) (slot->head - slot->tail));
		values[3] = Int64GetDatum(slot->written);
		values[4] = Int64GetDatum(slot->dead_letters);
		values[5] = Int64GetDatum((int64) (slot->span_head - slot->span_tail));
		values[6] = Int64GetDatum(slot->spans_written);
		values[7] = Int64GetDatum(slot->spans_dropped);
		for (int j = 1; j < MAESTER_MAX_JOB_WORKERS; j++)
			jobs += slot->job_pid[j] != 0;
		values[8] = Int32GetDatum(jobs + (slot->worker_pid != 0 && maester_job_workers > 0));
		values[9] = Int32GetDatum(slot->callback_pid);
		nulls[9] = slot->callback_pid == 0;
		values[10] = CStringGetTextDatum(slot->start_error);
		nulls[10] = slot->start_error[0] == '\0';
		LWLockRelease(slot->lock);
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*-------------------------------------------------------------------------
 *
 * job.c
 *	  Asynchronous jobs: maester.submit queues a request as a row of
 *	  maester.job; the job workers of the database run it through the call
 *	  machine (call.h), with the same ledger, budgets, evaluation and traces
 *	  as llm_generate.
 *
 * Jobs are run by the database's resident worker (resident.c), which is a
 * persistent driver of run_calls: it keeps up to maester.job_concurrency
 * calls in flight on its one curl multi handle beside writing the ledger,
 * and takes new jobs whenever there is room, so a fast job never waits
 * behind a slow one.  When its room is full and jobs wait, it asks for
 * more job workers (up to maester.job_workers processes per database, and
 * maester.max_extra_workers over the server), which the launcher starts
 * and which exit when they have had no job for a while.
 *
 *	 - Waking: submit registers a commit callback that bumps the slot's
 *	   job_wakeups and sets the workers' latches; a worker polls the table
 *	   when the counter moved, when its last claim filled all its room, and
 *	   once a second (for cancellations and lost wakeups) -- never in a
 *	   busy loop.
 *	 - Claiming: one short transaction takes up to the free room with
 *	   FOR UPDATE SKIP LOCKED, sets status running and a fresh request_id
 *	   (the call's, so its ledger rows are known before anything is sent),
 *	   prepares the calls, and commits durably before any of them is sent.
 *	 - Running: each move of a call runs in a transaction of its own, as
 *	   the submitting role and tenant; none is held across HTTP.
 *	 - Finishing: the jobs that ended in a round of the machine are recorded
 *	   together, in one transaction (one durable commit for many jobs).  A
 *	   job's callback procedure is user code: it is not run here, where it
 *	   could hold up the ledger or other users' jobs, but by the database's
 *	   callback worker (callback.c), started for it.  A job row locked by
 *	   someone else is never waited for: it is recorded at a later round.
 *	 - Interruptions: a job whose worker stopped while it was running is
 *	   requeued when it never reached the ledger (a PENDING row is durable
 *	   before a request leaves, so no ledger row means nothing was sent);
 *	   otherwise it may have been answered and billed, so it goes to review
 *	   -- or back to the queue with maester.job_retry_interrupted.  A clean
 *	   stop (SIGTERM, shutdown, fewer workers configured) does this at once,
 *	   after settling the in-flight attempts as cancelled; after a crash,
 *	   the resident worker does it for the workers that are gone.  A row
 *	   locked by someone else is left for later, never waited for.
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
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "call.h"
#include "catalog.h"
#include "ledger.h"
#include "request.h"
#include "settings.h"
#include "tenant.h"
#include "util.h"
#include "job.h"
#include "kb.h"
#include "launcher.h"

PGDLLEXPORT void maester_job_main(Datum arg);

/* how often an idle worker looks at the table anyway */
#define JOB_POLL_MS 1000
/* ended jobs recorded at once, at the latest */
#define JOB_FLUSH_AT 64
/* a job worker beyond the resident one exits after this long without jobs */
#define JOB_IDLE_EXIT_MS 10000

/* ---------------------------------------------------------------------
 * Submitting and cancelling
 * ---------------------------------------------------------------------
 */

static bool JobsToWake = false;
static bool JobXactCallbackRegistered = false;

/* Bump the slot's wakeup counter and set its job workers' latches */
static void
wake_job_workers(LedgerSlot *slot)
{
	Latch	   *latches[MAESTER_MAX_JOB_WORKERS + 1];
	int			n = 0;

	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	slot->job_wakeups++;
	if (slot->worker_latch != NULL)
		latches[n++] = slot->worker_latch;	/* the resident worker runs jobs */
	for (int i = 0; i < MAESTER_MAX_JOB_WORKERS; i++)
		if (slot->job_latch[i] != NULL)
			latches[n++] = slot->job_latch[i];
	LWLockRelease(slot->lock);
	for (int i = 0; i < n; i++)
		SetLatch(latches[i]);
}

/* At commit of a transaction that submitted or cancelled jobs: wake */
static void
job_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && JobsToWake)
	{
		LedgerSlot *slot = ledger_slot_if_ready();

		if (slot != NULL)
			wake_job_workers(slot);
	}
	/* (a prepared transaction's jobs are found by the workers' poll) */
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT)
		JobsToWake = false;
}

static void
wake_at_commit(void)
{
	if (!JobXactCallbackRegistered)
	{
		RegisterXactCallback(job_xact_callback, NULL);
		JobXactCallbackRegistered = true;
	}
	JobsToWake = true;
}

/*
 * Run `sql` with `nargs` arguments as the owner of maester.job, with a
 * safe search_path; the caller has connected SPI.
 */
static int
spi_as_owner(const char *sql, int nargs, Oid *types, Datum *values,
			 const char *nulls, long tcount)
{
	OwnerScope	scope;
	int			rc;

	maester_become_owner(maester_table_oid("job"), &scope);
	rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, tcount);
	maester_restore_user(&scope);
	return rc;
}

PG_FUNCTION_INFO_V1(job_submit);
/*
 * maester.submit(request jsonb, callback regproc, submission text)
 *	 RETURNS bigint
 */
Datum
job_submit(PG_FUNCTION_ARGS)
{
	Jsonb	   *request;
	Oid			callback = PG_ARGISNULL(1) ? InvalidOid : PG_GETARG_OID(1);
	char	   *submission;
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	Oid			types[5] = {JSONBOID, OIDOID, TEXTOID, TEXTOID, TEXTOID};
	bool		isnull;
	int64		id;

	maester_check_catalog();
	maester_require_preload();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("request must not be NULL")));
	request = PG_GETARG_JSONB_P(0);
	request_validate(request);

	if (OidIsValid(callback))
	{
		HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(callback));
		Form_pg_proc proc;
		bool		ok;

		if (!HeapTupleIsValid(tup))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("callback %u does not exist", callback)));
		proc = (Form_pg_proc) GETSTRUCT(tup);
		ok = proc->prokind == PROKIND_PROCEDURE && proc->pronargs == 1 &&
			proc->proargtypes.values[0] == INT8OID;
		ReleaseSysCache(tup);
		if (!ok)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("callback must be a procedure taking the job id (bigint)"),
					 errhint("CREATE PROCEDURE my_callback(job_id bigint) ...")));
		if (pg_proc_aclcheck(callback, GetUserId(), ACL_EXECUTE) != ACLCHECK_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for procedure %s", get_func_name(callback))));
	}
	if (!PG_ARGISNULL(2))
		submission = text_to_cstring(PG_GETARG_TEXT_PP(2));
	else
		submission = psprintf("txn-%llu", (unsigned long long)
							  U64FromFullTransactionId(GetTopFullTransactionId()));

	/* the slot: its workers are started for it, and woken through it */
	(void) ledger_attach();

	values[0] = JsonbPGetDatum(request);
	values[1] = ObjectIdGetDatum(callback);
	nulls[1] = OidIsValid(callback) ? ' ' : 'n';
	values[2] = CStringGetTextDatum(submission);
	values[3] = CStringGetTextDatum(maester_current_tenant());
	values[4] = CStringGetTextDatum(GetUserNameFromId(GetUserId(), false));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (spi_as_owner("INSERT INTO maester.job (request, callback, submission, tenant, role) "
					 "VALUES ($1, $2::regproc, $3, $4, $5) RETURNING id",
					 5, types, values, nulls, 1) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "could not queue the job");
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	wake_at_commit();
	PG_RETURN_INT64(id);
}

PG_FUNCTION_INFO_V1(job_cancel);
/*
 * maester.cancel_job(id bigint) RETURNS boolean
 */
Datum
job_cancel(PG_FUNCTION_ARGS)
{
	int64		id = PG_GETARG_INT64(0);
	Datum		arg = Int64GetDatum(id);
	Oid			type = INT8OID;
	char	   *status;
	char	   *role;
	char	   *tenant;
	bool		result = false;

	maester_check_catalog();
	maester_require_preload();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (spi_as_owner("SELECT status, role::text, tenant FROM maester.job WHERE id = $1 FOR UPDATE",
					 1, &type, &arg, NULL, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the job");
	if (SPI_processed > 0 && !maester_is_admin(GetUserId()))
	{
		role = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
		tenant = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
		/* another role's or tenant's job is none of this caller's: not found */
		if (strcmp(role, GetUserNameFromId(GetUserId(), false)) != 0 ||
			strcmp(tenant, maester_current_tenant()) != 0)
			SPI_processed = 0;
	}
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("job %lld does not exist", (long long) id),
				 errhint("A job can be cancelled by its submitter, as its tenant, or by a member of maester_admin.")));
	status = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	if (strcmp(status, "queued") == 0)
	{
		if (spi_as_owner("UPDATE maester.job SET status = 'cancelled', "
						 "finished_at = pg_catalog.clock_timestamp(), error_code = '57014', "
						 "error_class = 'cancelled', error_message = 'cancelled before it started' "
						 "WHERE id = $1", 1, &type, &arg, NULL, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not cancel the job");
		result = true;
	}
	else if (strcmp(status, "running") == 0)
	{
		if (spi_as_owner("UPDATE maester.job SET cancel_requested = true WHERE id = $1",
						 1, &type, &arg, NULL, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not cancel the job");
		wake_at_commit();
		result = true;
	}
	SPI_finish();
	PG_RETURN_BOOL(result);
}

/* ---------------------------------------------------------------------
 * The job worker
 * ---------------------------------------------------------------------
 */

/* A job this worker took */
typedef struct JobEntry
{
	bool		used;
	int64		id;
	Oid			role;
	char	   *tenant;
	Call	   *call;
} JobEntry;

struct JobWorker
{
	int			index;
	LedgerSlot *slot;
	Oid			self;			/* the worker's own role */
	MemoryContext cxt;
	JobEntry   *entries;		/* maester_job_concurrency */
	int			nentries;
	int			live;			/* entries in use */
	Call	  **ready;			/* taken, prepared, not yet handed out */
	int			nready;
	Call	  **ended;			/* ended, not yet recorded */
	int			nended;
	uint64		seen_wakeups;
	bool		stopping;		/* recording what ended, on the way out */
	bool		callbacks;		/* a recorded job has a callback to run */
	TimestampTz last_poll;
	bool		poll_again;		/* the last claim filled all the room */
	TimestampTz idle_since;		/* no job since then, 0: busy */
};

static JobWorker *Worker = NULL;

/* Take on the identity of a job's submitter: role (with sec_flags) and tenant */
static void
job_identity_as(JobEntry *e, int sec_flags)
{
	SetUserIdAndSecContext(e->role, SECURITY_LOCAL_USERID_CHANGE | sec_flags);
	maester_set_tenant(e->tenant, GUC_ACTION_SET);
}

static void
job_identity(JobEntry *e)
{
	job_identity_as(e, 0);
}

/* Back to the worker's own identity */
static void
worker_identity(JobWorker *w)
{
	SetUserIdAndSecContext(w->self, 0);
}

/*
 * Requeue or set aside the running jobs of worker number `index` (worker 0
 * also takes those of numbers no longer configured): see the header.
 * Runs in its own transaction.
 */
static void
release_jobs_of(JobWorker *w, int index, const char *why)
{
	Datum		values[4];
	Oid			types[4] = {INT4OID, INT4OID, BOOLOID, TEXTOID};
	int			rc;
	MemoryContext oldcxt = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	values[0] = Int32GetDatum(index);
	values[1] = Int32GetDatum(maester_job_workers);
	values[2] = BoolGetDatum(maester_job_retry_interrupted);
	values[3] = CStringGetTextDatum(why);
	rc = SPI_execute_with_args(
		"WITH r AS ("
		"  SELECT j.id, j.cancel_requested,"
		"         EXISTS (SELECT 1 FROM maester.usage u WHERE u.request_id = j.request_id) AS reached"
		"    FROM maester.job j"
		"   WHERE j.status = 'running'"
		"     AND (j.worker = $1 OR ($1 = 0 AND (j.worker IS NULL OR j.worker >= $2)))"
		/* never the jobs this process runs now */
		"     AND j.worker_pid IS DISTINCT FROM pg_catalog.pg_backend_pid()"
		/* a row locked by someone else is left to the next worker: never wait */
		"     FOR UPDATE OF j SKIP LOCKED)"
		"UPDATE maester.job j SET"
		"  status = CASE WHEN r.cancel_requested THEN 'cancelled'"
		"                WHEN NOT r.reached OR $3 THEN 'queued' ELSE 'review' END,"
		"  finished_at = CASE WHEN r.cancel_requested OR (r.reached AND NOT $3)"
		"                     THEN pg_catalog.clock_timestamp() END,"
		"  error_code = CASE WHEN r.cancel_requested OR (r.reached AND NOT $3) THEN '57P01' END,"
		"  error_class = CASE WHEN r.cancel_requested THEN 'cancelled'"
		"                     WHEN r.reached THEN 'interrupted' END,"
		"  error_message = CASE WHEN r.cancel_requested THEN 'cancelled'"
		"                       WHEN r.reached THEN $4 || '; the call may have been answered and billed (see its ledger rows), so it '"
		"                            || CASE WHEN $3 THEN 'was queued again (maester.job_retry_interrupted)'"
		"                                    ELSE 'was not run again' END END,"
		"  worker = NULL, worker_pid = NULL, cancel_requested = false"
		"  FROM r WHERE j.id = r.id",
		4, types, values, NULL, false, 0);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "could not release the running jobs");
	if (SPI_processed > 0)
		ereport(LOG,
				(errmsg("maester job worker %d released %llu running jobs (%s)",
						index, (unsigned long long) SPI_processed, why)));
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(oldcxt);
}

static void
release_running_jobs(JobWorker *w, const char *why)
{
	release_jobs_of(w, w->index, why);
}

/*
 * The resident worker, now and then: the running jobs of job workers that
 * are gone (a crash; a worker that stops releases its own, but for rows
 * locked at the time), and callbacks that wait without a callback worker.
 */
void
jobs_release_orphans(JobWorker *w)
{
	bool		waiting = false;

	/* its own predecessor's, left because their rows were locked then */
	if (w->index == 0)
		release_jobs_of(w, 0, "its worker is gone");
	for (int i = 1; i < MAESTER_MAX_JOB_WORKERS; i++)
	{
		pid_t		pid;

		LWLockAcquire(w->slot->lock, LW_SHARED);
		pid = w->slot->job_pid[i];
		LWLockRelease(w->slot->lock);
		if (pid == 0)
			release_jobs_of(w, i, "its job worker is gone");
	}

	/* callbacks that wait with no callback worker (after a restart, say) */
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT 1 FROM maester.job j WHERE j.callback IS NOT NULL "
					"AND j.callback_done_at IS NULL "
					"AND j.status = ANY (ARRAY['done', 'failed', 'cancelled']) LIMIT 1",
					true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look for waiting callbacks");
	waiting = SPI_processed > 0;
	/* and documents that wait with no knowledge worker */
	kb_check_waiting(w->slot);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	if (waiting)
	{
		LWLockAcquire(w->slot->lock, LW_EXCLUSIVE);
		if (w->slot->callback_pid == 0 && !w->slot->callbacks_wanted)
		{
			w->slot->callbacks_wanted = true;
			waiting = false;	/* (now: the launcher is to be woken) */
		}
		LWLockRelease(w->slot->lock);
		if (!waiting)
			wake_launcher();
	}
}

/* A free entry (there is one: claims never exceed the room) */
static int
free_entry(JobWorker *w)
{
	for (int i = 0; i < w->nentries; i++)
		if (!w->entries[i].used)
			return i;
	elog(ERROR, "no free job entry");
	return -1;
}

/*
 * Prepare a taken job's call as its submitter, in a subtransaction: a job
 * that cannot be prepared (a role that is gone, an unknown prompt, a model
 * nobody serves) is a failed call.
 */
typedef struct JobPrep
{
	JobWorker  *w;
	int			ei;
	Jsonb	   *request;
	pg_uuid_t  *request_id;
	MemoryContext cxt;
	Call	   *c;
} JobPrep;

static void
prepare_job_fn(void *arg)
{
	JobPrep    *jp = (JobPrep *) arg;
	JobEntry   *e = &jp->w->entries[jp->ei];

	if (!OidIsValid(e->role))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("the role that submitted job %lld no longer exists", (long long) e->id)));
	job_identity(e);
	jp->c = call_from_request(jp->request, jp->ei, jp->cxt, jp->request_id);
	worker_identity(jp->w);
}

static Call *
prepare_job(JobWorker *w, int ei, Jsonb *request, pg_uuid_t *request_id)
{
	JobPrep		jp = {w, ei, request, request_id, NULL, NULL};
	ErrorData  *edata;

	jp.cxt = AllocSetContextCreate(w->cxt, "maester job", ALLOCSET_DEFAULT_SIZES);
	edata = maester_subxact(prepare_job_fn, &jp, jp.cxt);
	worker_identity(w);
	if (edata == NULL)
		return jp.c;
	if (ShutdownRequestPending)
		ReThrowError(edata);
	return call_from_error(ei, jp.cxt, edata);
}

/*
 * The statements a job worker runs at every poll and for every job (the
 * cancellations, the claim, the end), planned once per process: parsed and
 * planned at every execution they took about a fifth of a busy job
 * worker's time.
 */
static SPIPlanPtr CancelPlan = NULL;
static SPIPlanPtr ClaimPlan = NULL;
static SPIPlanPtr EndPlan = NULL;

/*
 * One look at the table: cancellations of our running jobs, and new jobs
 * for the free room, in one short transaction committed (durably) before
 * any of them is sent.
 */
static void
poll_jobs(JobWorker *w)
{
	int			room = w->nentries - w->live;
	Datum		values[3];
	Oid			types[3] = {INT4OID, INT4OID, INT4OID};
	MemoryContext oldcxt;

	LWLockAcquire(w->slot->lock, LW_SHARED);
	w->seen_wakeups = w->slot->job_wakeups;
	LWLockRelease(w->slot->lock);
	w->last_poll = GetCurrentTimestamp();
	w->poll_again = false;

	oldcxt = CurrentMemoryContext;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	maester_check_catalog();	/* the catalog must still be ours */
	PushActiveSnapshot(GetTransactionSnapshot());
	worker_identity(w);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	pgstat_report_activity(STATE_RUNNING, "claiming jobs");

	/* cancellations */
	if (w->live > 0)
	{
		values[0] = Int32GetDatum(w->index);
		if (SPI_execute_plan(maester_kept_plan(&CancelPlan,
									   "SELECT id FROM maester.job WHERE status = 'running' "
									   "AND cancel_requested AND worker = $1", 1, types),
							 values, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read cancellations");
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			bool		isnull;
			int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
														 SPI_tuptable->tupdesc, 1, &isnull));

			for (int i = 0; i < w->nentries; i++)
				if (w->entries[i].used && w->entries[i].id == id && w->entries[i].call)
					call_request_cancel(w->entries[i].call);
		}
	}

	/* new jobs */
	if (room > 0)
	{
		uint64		n;
		SPITupleTable *tt;

		values[0] = Int32GetDatum(w->index);
		values[1] = Int32GetDatum(MyProcPid);
		values[2] = Int32GetDatum(room);
		if (SPI_execute_plan(maester_kept_plan(&ClaimPlan,
									   "UPDATE maester.job j SET status = 'running', "
									   "started_at = pg_catalog.clock_timestamp(), attempts = j.attempts + 1, "
									   "worker = $1, worker_pid = $2, request_id = pg_catalog.gen_random_uuid(), "
									   "cancel_requested = false, error_code = NULL, error_class = NULL, "
									   "error_message = NULL "
									   "FROM (SELECT q.id FROM maester.job q WHERE q.status = 'queued' "
									   "      ORDER BY q.id LIMIT $3 FOR UPDATE SKIP LOCKED) t "
									   "WHERE j.id = t.id "
									   "RETURNING j.id, j.request, j.role::text, j.tenant, j.request_id",
									   3, types),
							 values, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
			elog(ERROR, "could not claim jobs");
		n = SPI_processed;
		tt = SPI_tuptable;
		w->poll_again = n == (uint64) room;
		for (uint64 r = 0; r < n; r++)
		{
			bool		isnull;
			int			ei = free_entry(w);
			JobEntry   *e = &w->entries[ei];
			Jsonb	   *request;
			pg_uuid_t  *rid;
			char	   *role;

			e->used = true;
			e->call = NULL;
			e->id = DatumGetInt64(SPI_getbinval(tt->vals[r], tt->tupdesc, 1, &isnull));
			request = DatumGetJsonbPCopy(SPI_getbinval(tt->vals[r], tt->tupdesc, 2, &isnull));
			role = SPI_getvalue(tt->vals[r], tt->tupdesc, 3);
			e->role = get_role_oid(role, true);
			e->tenant = MemoryContextStrdup(w->cxt, SPI_getvalue(tt->vals[r], tt->tupdesc, 4));
			rid = DatumGetUUIDP(SPI_getbinval(tt->vals[r], tt->tupdesc, 5, &isnull));
			w->live++;
			e->call = prepare_job(w, ei, request, rid);
			w->ready[w->nready++] = e->call;
		}
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(oldcxt);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* run_calls' source: a prepared job, if one is ready */
static Call *
job_next(void *arg)
{
	JobWorker  *w = (JobWorker *) arg;

	if (w->nready == 0)
		return NULL;
	return w->ready[--w->nready];
}

/* Before each move of a job's call: its submitter's identity */
static void
job_enter(Call *c, void *arg)
{
	JobWorker  *w = (JobWorker *) arg;
	JobEntry   *e = &w->entries[c->ordinal];

	if (OidIsValid(e->role))
		job_identity(e);
}

static void
finish_success_fn(void *arg)
{
	call_succeeded_finish((Call *) arg);
}

/*
 * Record a job's end -- its result or error -- in the caller's
 * transaction, with SPI connected; false when its row is locked by someone
 * else (a session cancelling it): it is recorded at a later round (or by
 * the next worker), never waited for.  A callback is left to the
 * database's callback worker (callback.c), so that user code never runs
 * where it could hold up the ledger or other jobs.
 */
static bool
record_end(JobWorker *w, Call *c)
{
	int			ei = c->ordinal;
	JobEntry   *e = &w->entries[ei];
	Datum		g[CALL_GENERATION_NATTS];
	bool		gnulls[CALL_GENERATION_NATTS];
	Datum		values[CALL_GENERATION_NATTS + 6];
	char		nulls[CALL_GENERATION_NATTS + 6];
	Oid			types[CALL_GENERATION_NATTS + 6] = {
		INT8OID, TEXTOID, BOOLOID, TEXTOID, TEXTOID, TEXTOID,
		UUIDOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT8OID, INT8OID,
		INT8OID, INT8OID, BOOLOID, FLOAT8OID, INT4OID, BOOLOID, TEXTOID, TEXTOID,
		TEXTOID, TEXTOID, TEXTOID, NUMERICOID, BOOLOID, JSONBOID,
		JSONBOID, JSONBOID, TEXTOID,
	BOOLOID};
	bool		ok = c->phase == PHASE_DONE;
	bool		has_g;
	const char *status;
	bool		isnull;

	if (ok)
	{
		/* spans, statistics, capture: a failure here does not undo the job */
		ErrorData  *edata;

		job_identity(e);
		edata = maester_subxact(finish_success_fn, c, CurrentMemoryContext);
		worker_identity(w);
		if (edata != NULL)
		{
			if (ShutdownRequestPending && !w->stopping)
				ReThrowError(edata);
			ereport(LOG,
					(errmsg("maester job %lld succeeded, but recording it failed: %s",
							(long long) e->id, edata->message)));
		}
	}
	worker_identity(w);

	has_g = call_generation_values(c, g, gnulls);
	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int64GetDatum(e->id);
	if (ok)
		status = "done";
	else
	{
		const char *msg = c->message ? c->message : "";

		status = c->sqlstate == ERRCODE_QUERY_CANCELED ? "cancelled" : "failed";
		values[3] = CStringGetTextDatum(unpack_sql_state(c->sqlstate));
		values[4] = CStringGetTextDatum(c->error_class ? c->error_class : "error");
		values[5] = CStringGetTextDatum(c->detail ? psprintf("%s (%s)", msg, c->detail) : msg);
	}
	values[1] = CStringGetTextDatum(status);
	values[2] = BoolGetDatum(ok && has_g);
	if (ok)
		nulls[3] = nulls[4] = nulls[5] = 'n';
	for (int k = 0; k < CALL_GENERATION_NATTS; k++)
	{
		values[6 + k] = has_g ? g[k] : (Datum) 0;
		nulls[6 + k] = has_g && !gnulls[k] ? ' ' : 'n';
	}
	if (SPI_execute_plan(maester_kept_plan(&EndPlan,
								   "UPDATE maester.job j SET status = $2, "
								   "finished_at = pg_catalog.clock_timestamp(), trace_id = $8, "
								   "error_code = $4, error_class = $5, error_message = $6, "
								   "result = CASE WHEN $3 THEN ROW($7, $8, $9, $10, $11, $12, $13, $14, $15, $16, "
								   "$17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28)::maester.job_result END, "
								   "tool_calls = CASE WHEN $3 THEN $29 END, parsed = CASE WHEN $3 THEN $30 END, "
								   "refusal = CASE WHEN $3 THEN $31 END, cached = CASE WHEN $3 THEN $32 END, "
								   "worker_pid = NULL, cancel_requested = false "
								   "FROM (SELECT q.id FROM maester.job q WHERE q.id = $1 FOR UPDATE SKIP LOCKED) l "
								   "WHERE j.id = l.id RETURNING j.callback IS NOT NULL",
								   CALL_GENERATION_NATTS + 6, types),
						 values, nulls, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not record the end of job %lld", (long long) e->id);
	if (SPI_processed == 0)
		return false;			/* locked: later */
	if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
		w->callbacks = true;
	return true;
}

/*
 * record_end in a subtransaction: one job that cannot be recorded (its
 * capture, its row) does not cost the others of the round their results;
 * it is marked failed, saying why.
 */
typedef struct JobEnd
{
	JobWorker  *w;
	Call	   *c;
	bool		recorded;
} JobEnd;

static void
record_end_fn(void *arg)
{
	JobEnd	   *je = (JobEnd *) arg;

	je->recorded = record_end(je->w, je->c);
}

static bool
record_end_isolated(JobWorker *w, Call *c)
{
	JobEnd		je = {w, c, false};
	ErrorData  *edata = maester_subxact(record_end_fn, &je, CurrentMemoryContext);
	JobEntry   *e = &w->entries[c->ordinal];
	Datum		v[2];
	Oid			t[2] = {INT8OID, TEXTOID};

	worker_identity(w);
	if (edata == NULL)
		return je.recorded;
	/* (on the way out, interrupts are held: nothing to rethrow for) */
	if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
		edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN ||
		edata->sqlerrcode == ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE)
	{
		if (!w->stopping)
			ReThrowError(edata);
		return false;
	}
	ereport(LOG,
			(errmsg("maester job %lld: could not record its end: %s",
					(long long) e->id, edata->message)));
	v[0] = Int64GetDatum(e->id);
	v[1] = CStringGetTextDatum(psprintf("could not record the result: %s", edata->message));
	if (SPI_execute_with_args("UPDATE maester.job j SET status = 'failed', "
							  "finished_at = pg_catalog.clock_timestamp(), error_code = 'XX000', "
							  "error_class = 'internal', error_message = $2, worker_pid = NULL "
							  "FROM (SELECT q.id FROM maester.job q WHERE q.id = $1 FOR UPDATE SKIP LOCKED) l "
							  "WHERE j.id = l.id", 2, t, v, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not record the end of job %lld", (long long) e->id);
	return SPI_processed > 0;
}

/*
 * Record the ends of the finished jobs in one transaction (one commit, not
 * one per job), then forget them: their room is free for new jobs.  A job
 * whose row is locked stays for the next round; on the way out it is left
 * to the next worker (which finds it running and sets it aside).
 */
static void
flush_ended(JobWorker *w)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	bool	   *recorded;
	int			kept = 0;

	if (w->nended == 0)
		return;
	recorded = palloc0(sizeof(bool) * w->nended);
	pgstat_report_activity(STATE_RUNNING, "recording job results");
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	w->callbacks = false;
	for (int i = 0; i < w->nended; i++)
		recorded[i] = record_end_isolated(w, w->ended[i]);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(oldcxt);
	pgstat_report_activity(STATE_IDLE, NULL);

	/* callbacks are run by the callback worker, started for them */
	if (w->callbacks)
	{
		LWLockAcquire(w->slot->lock, LW_EXCLUSIVE);
		w->slot->callbacks_wanted = true;
		LWLockRelease(w->slot->lock);
		wake_launcher();
	}

	for (int i = 0; i < w->nended; i++)
	{
		Call	   *c = w->ended[i];
		JobEntry   *e = &w->entries[c->ordinal];

		if (!recorded[i] && !w->stopping)
		{
			w->ended[kept++] = c;	/* tried again next round */
			continue;
		}
		MemoryContextDelete(c->cxt);
		e->used = false;
		e->call = NULL;
		pfree(e->tenant);
		w->live--;
	}
	w->nended = kept;
	pfree(recorded);
}

/* run_calls' sink: a job ended; recorded with the others of the round */
static void
job_done(Call *c, void *arg)
{
	JobWorker  *w = (JobWorker *) arg;

	w->ended[w->nended++] = c;
	if (w->nended >= JOB_FLUSH_AT)
		flush_ended(w);
}

/* Before run_calls sleeps: record what ended */
void
jobs_idle(JobWorker *w)
{
	flush_ended(w);
	if (w->live > 0 || w->nready > 0)
		w->idle_since = 0;
	else if (w->idle_since == 0)
		w->idle_since = GetCurrentTimestamp();
}

static long
job_idle(void *arg)
{
	jobs_idle((JobWorker *) arg);
	return -1;
}

/*
 * Each round: the table is polled when jobs were submitted (or a second
 * passed); the resident worker asks for more job workers when its room is
 * full and jobs wait.  True when a job worker beyond the resident one
 * should stop: it is no longer configured, or it has been idle for
 * JOB_IDLE_EXIT_MS.
 */
bool
jobs_round(JobWorker *w)
{
	uint64		wakeups;

	if (w->index >= Max(maester_job_workers, 1) ||
		(w->index > 0 && w->idle_since != 0 &&
		 TimestampDifferenceExceeds(w->idle_since, GetCurrentTimestamp(), JOB_IDLE_EXIT_MS)))
		return w->index > 0;
	if (w->index == 0 && maester_job_workers == 0)
		return false;			/* jobs stay queued */

	LWLockAcquire(w->slot->lock, LW_SHARED);
	wakeups = w->slot->job_wakeups;
	LWLockRelease(w->slot->lock);
	if (wakeups != w->seen_wakeups || (w->poll_again && w->live < w->nentries) ||
		TimestampDifferenceExceeds(w->last_poll, GetCurrentTimestamp(), JOB_POLL_MS))
		poll_jobs(w);

	/* more jobs wait than there is room for: more job workers */
	if (w->index == 0 && w->poll_again && w->live >= w->nentries && maester_job_workers > 1)
	{
		bool		wake = false;

		LWLockAcquire(w->slot->lock, LW_EXCLUSIVE);
		if (w->slot->jobs_wanted < maester_job_workers)
		{
			w->slot->jobs_wanted = maester_job_workers;
			wake = true;
		}
		LWLockRelease(w->slot->lock);
		if (wake)
			wake_launcher();
	}
	return false;
}

static bool
job_round(void *arg)
{
	JobWorker  *w = (JobWorker *) arg;

	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
	return ShutdownRequestPending || jobs_round(w);
}

/*
 * A job driver for the worker of number `index` of the slot's database (0:
 * the resident worker): what a predecessor left running is released, and
 * `d` is filled with the driver's callbacks (the resident worker wraps the
 * round and idle ones with its own work).
 */
JobWorker *
jobs_begin(LedgerSlot *slot, int index, CallDriver *d)
{
	JobWorker  *w = MemoryContextAllocZero(TopMemoryContext, sizeof(JobWorker));

	w->index = index;
	w->slot = slot;
	w->self = GetUserId();
	w->cxt = AllocSetContextCreate(TopMemoryContext, "maester jobs", ALLOCSET_DEFAULT_SIZES);
	w->nentries = maester_job_concurrency;
	w->entries = MemoryContextAllocZero(w->cxt, sizeof(JobEntry) * w->nentries);
	w->ready = MemoryContextAllocZero(w->cxt, sizeof(Call *) * w->nentries);
	w->ended = MemoryContextAllocZero(w->cxt, sizeof(Call *) * w->nentries);
	Worker = w;

	release_running_jobs(w, "its job worker stopped");

	memset(d, 0, sizeof(*d));
	d->next = job_next;
	d->done = job_done;
	d->enter = job_enter;
	d->round = job_round;
	d->idle = job_idle;
	d->arg = w;
	d->concurrency = w->nentries;
	d->isolation = CALLS_XACT;
	d->persistent = true;
	return w;
}

/*
 * The worker stops (or failed): the jobs that ended are recorded, the
 * running ones released (see the header).  Interrupts are held.
 */
void
jobs_end(JobWorker *w, bool stopping)
{
	worker_identity(w);
	w->stopping = true;
	PG_TRY();
	{
		flush_ended(w);
	}
	PG_CATCH();
	{
		FlushErrorState();
		AbortOutOfAnyTransaction();
		worker_identity(w);
	}
	PG_END_TRY();
	release_running_jobs(w, stopping ? "its job worker was stopped" : "its job worker failed");
}

static void
job_worker_exit(int code, Datum arg)
{
	if (Worker == NULL || Worker->slot == NULL || Worker->index == 0)
		return;
	LWLockAcquire(Worker->slot->lock, LW_EXCLUSIVE);
	if (Worker->slot->job_pid[Worker->index] == MyProcPid)
	{
		Worker->slot->job_pid[Worker->index] = 0;
		Worker->slot->job_latch[Worker->index] = NULL;
		/* not wanted again until the resident worker asks */
		Worker->slot->jobs_wanted = Min(Worker->slot->jobs_wanted, Worker->index);
	}
	LWLockRelease(Worker->slot->lock);
	wake_launcher();
}

/*
 * A job worker beyond the resident one: started by the launcher when the
 * resident worker's room is full and jobs wait, it runs jobs like the
 * resident worker does, and exits after JOB_IDLE_EXIT_MS without any.
 */
void
maester_job_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	int			index;
	JobWorker  *w;
	LedgerSlot *slot;
	CallDriver	d;
	bool		taken = false;

	memcpy(&index, MyBgworkerEntry->bgw_extra, sizeof(int));
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	if (index < 1 || index >= MAESTER_MAX_JOB_WORKERS || index >= maester_job_workers ||
		!maester_worker_wait_catalog("job worker", NULL) || (slot = slot_find(MyDatabaseId)) == NULL)
		proc_exit(0);

	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	if (slot->job_pid[index] == 0)
	{
		slot->job_pid[index] = MyProcPid;
		slot->job_latch[index] = &MyProc->procLatch;
		taken = true;
	}
	LWLockRelease(slot->lock);
	if (!taken)
		proc_exit(0);			/* this number is taken */
	SetConfigOption("application_name", "maester job worker", PGC_USERSET, PGC_S_OVERRIDE);
	/* the worker's own queries resolve nothing through a user's schema */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION);
	/* a claim is durable before its calls are sent, whatever the default */
	SetConfigOption("synchronous_commit", "on", PGC_SUSET, PGC_S_OVERRIDE);
	w = jobs_begin(slot, index, &d);
	before_shmem_exit(job_worker_exit, (Datum) 0);
	ereport(LOG, (errmsg("maester job worker %d ready for database %u", index, dboid)));

	PG_TRY();
	{
		run_calls(&d);
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		bool		stopping;

		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(TopMemoryContext);
		edata = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		/* SIGTERM, idle, or fewer workers configured (run_calls' 57P01) */
		stopping = ShutdownRequestPending || edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN;
		if (!stopping)
			ereport(LOG,
					(errmsg("maester job worker %d failed: %s", index, edata->message)));
		jobs_end(w, stopping);
		RESUME_INTERRUPTS();
		proc_exit(stopping ? 0 : 1);
	}
	PG_END_TRY();
	proc_exit(0);
}

/*-------------------------------------------------------------------------
 *
 * spanwrite.c
 *	  The resident worker's writing of spans: from the span queue to
 *	  maester.span, in batches, without waiting for a flush.
 *
 * Spans gather in the queue for SPAN_NAP_MS (1 ms) after the first one (or
 * until the queue is half full), then go in chunks of at most SPAN_CHUNK
 * spans, one transaction each with synchronous_commit off (nobody waits
 * for spans).  Each span goes straight into the table and its indexes
 * (table_tuple_insert, then ExecInsertIndexTuples, as COPY FROM does),
 * with no statement to plan and start per insert, so that the chunk can
 * stop before any span: it commits what is in when a ledger record waits,
 * and does not start while one does, until the span queue is half full;
 * above that, more spans go in first the fuller it is.  One span (about
 * 10 us of the worker's CPU) is what a ledger record waits behind while
 * spans keep up.  The short gathering spreads the writing over the calls:
 * gathered for 100 ms, spans came in bursts of tens of milliseconds that
 * kept both cores of the benchmark VM busy, and the calls made meanwhile
 * waited longer for their flushes (README, Benchmarks).
 *
 * That is only for the table as the extension made it.  When maester.span
 * has triggers, rules, CHECK constraints or columns of its own (see
 * direct_ok), or when a direct chunk fails (say on a unique index of the
 * user's), the chunk goes through INSERT ... ON CONFLICT DO NOTHING
 * instead, SPAN_STEP spans a statement, which honours all of them.
 *
 * The resident worker writes queued ledger records before each chunk, and
 * a chunk waits at most SPAN_LOCK_TIMEOUT for a lock on maester.span
 * (someone's LOCK TABLE): then it is kept and tried again SPAN_RETRY_MS
 * later, while new spans wait in the queue (and are dropped, counted, when
 * it is full).  A chunk that cannot be written for another reason must not
 * stop the worker: it is dropped with a WARNING (and counted with the
 * dropped spans).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "catalog.h"
#include "ledger.h"
#include "spanwrite.h"
#include "util.h"

#define SPAN_LOCK_TIMEOUT "50ms"

static SPIPlanPtr SpanPlan = NULL;
static const char *const SpanSql =
	"INSERT INTO maester.span (trace_id, span_id, parent_span_id, name, started_at, "
	" duration_us, status, attributes, tenant, request_id) "
	"SELECT s.t, s.s, s.p, s.n, s.st, s.d, s.stat, s.a, s.ten, s.r "
	"FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), "
	"  pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6), "
	"  pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9), "
	"  pg_catalog.unnest($10)) AS s(t, s, p, n, st, d, stat, a, ten, r) "
	"ON CONFLICT DO NOTHING";
static char *SpanBuf = NULL;
static Size SpanLen = 0;		/* a chunk taken, not yet all written */
static Size SpanOff = 0;		/* how much of it is written */
static int	SpanCount = 0;		/* spans from SpanOff on */
static TimestampTz GatherSince = 0;	/* the first span waiting, 0: none */
static TimestampTz RetryAt = 0;		/* the kept chunk is tried again then */

typedef enum SpanWrite
{
	SPANS_WRITTEN,
	SPANS_LOCKED,				/* maester.span is locked: try again later */
	SPANS_FAILED
} SpanWrite;

/* The columns of maester.span as the extension makes it, in order */
#define SPAN_NCOLS 11
static const struct
{
	const char *name;
	Oid			type;
	bool		notnull;
}			SpanCols[SPAN_NCOLS] =
{
	{"trace_id", TEXTOID, true},
	{"span_id", TEXTOID, true},
	{"parent_span_id", TEXTOID, false},
	{"name", TEXTOID, true},
	{"started_at", TIMESTAMPTZOID, true},
	{"duration_us", INT8OID, true},
	{"status", TEXTOID, true},
	{"attributes", JSONBOID, true},
	{"tenant", TEXTOID, true},
	{"request_id", UUIDOID, false},
	{"seq", INT8OID, true},
};

/* What the direct path writes with, for one transaction */
typedef struct SpanTarget
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
	int			col[SPAN_NCOLS];	/* where each of SpanCols is in the slot */
	Oid			seq;			/* the identity sequence of seq */
	CommandId	cid;
} SpanTarget;

/* a direct chunk failed, and said so: not again until one succeeds */
static bool DirectFailedLogged = false;

/*
 * Is maester.span, open in t->rel, as the extension made it, so that a
 * span can be stored without the executor's INSERT?  Anything an INSERT
 * would do beyond storing the row and its index entries (triggers,
 * foreign keys (triggers too), rules, CHECK constraints, defaults of
 * added columns, generated columns, partitions) makes it not; so does a
 * column whose type or nullability is not ours.  Dropped columns do not
 * count.  Its indexes, whatever they are, are kept by
 * ExecInsertIndexTuples.  Fills t->col and t->seq.
 */
static bool
direct_ok(SpanTarget *t)
{
	Relation	rel = t->rel;
	TupleDesc	desc = RelationGetDescr(rel);
	int			k = 0;

	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->trigdesc != NULL ||
		rel->rd_rules != NULL ||
		(desc->constr != NULL && (desc->constr->num_check > 0 ||
								  desc->constr->has_generated_stored)))
		return false;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(desc, i);

		if (a->attisdropped)
			continue;
		if (k == SPAN_NCOLS || a->atttypid != SpanCols[k].type ||
			a->attnotnull != SpanCols[k].notnull ||
			strcmp(NameStr(a->attname), SpanCols[k].name) != 0 || a->attgenerated != '\0' ||
			a->attidentity != (k == SPAN_NCOLS - 1 ? ATTRIBUTE_IDENTITY_ALWAYS : '\0'))
			return false;
		t->col[k++] = i;
	}
	if (k != SPAN_NCOLS)
		return false;
	t->seq = getIdentitySequence(RelationGetRelid(rel), t->col[SPAN_NCOLS - 1] + 1, true);
	return OidIsValid(t->seq);
}

/*
 * Open maester.span (locked, under lock_timeout) for the direct path; false
 * (nothing open, the lock kept) when it is not the extension's table.
 */
static bool
direct_open(SpanTarget *t)
{
	t->rel = table_openrv(makeRangeVar("maester", "span", -1), RowExclusiveLock);
	if (!direct_ok(t))
	{
		table_close(t->rel, NoLock);
		return false;
	}
	t->estate = CreateExecutorState();
	t->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(t->rri, t->rel, 1, NULL, 0);
	ExecOpenIndices(t->rri, false);
	t->slot = table_slot_create(t->rel, NULL);
	t->cid = GetCurrentCommandId(true);
	return true;
}

static void
direct_close(SpanTarget *t)
{
	ExecDropSingleTupleTableSlot(t->slot);
	ExecCloseIndices(t->rri);
	table_close(t->rel, NoLock);
	FreeExecutorState(t->estate);
}

/*
 * The values of span `r` for the columns of SpanCols but seq (which the
 * table gives), in the current memory context.
 */
static void
span_values(const SpanRecord *r, Datum *v, bool *null)
{
	pg_uuid_t  *u = palloc(sizeof(pg_uuid_t));

	memset(null, false, sizeof(bool) * (SPAN_NCOLS - 1));
	v[0] = CStringGetTextDatum(r->trace_id);
	v[1] = CStringGetTextDatum(r->span_id);
	v[2] = CStringGetTextDatum(r->parent_span_id);
	null[2] = r->parent_span_id[0] == '\0';
	v[3] = CStringGetTextDatum(r->name);
	v[4] = TimestampTzGetDatum(r->ts);
	v[5] = Int64GetDatum(r->duration_us);
	v[6] = CStringGetTextDatum(r->status);
	v[7] = DirectFunctionCall1(jsonb_in, CStringGetDatum(r->attrs[0] ? r->attrs : "{}"));
	v[8] = CStringGetTextDatum(r->tenant);
	*u = r->request_id;
	v[9] = UUIDPGetDatum(u);
	null[9] = !r->has_request_id;
}

/* Store span `r` and its index entries */
static void
direct_insert(SpanTarget *t, const SpanRecord *r)
{
	TupleTableSlot *slot = t->slot;
	Datum		v[SPAN_NCOLS];
	bool		null[SPAN_NCOLS];
	MemoryContext old = MemoryContextSwitchTo(GetPerTupleMemoryContext(t->estate));

	ExecClearTuple(slot);
	/* dropped columns are null */
	memset(slot->tts_isnull, true, sizeof(bool) * slot->tts_tupleDescriptor->natts);
	span_values(r, v, null);
	v[SPAN_NCOLS - 1] = Int64GetDatum(nextval_internal(t->seq, false));
	null[SPAN_NCOLS - 1] = false;
	for (int i = 0; i < SPAN_NCOLS; i++)
	{
		slot->tts_values[t->col[i]] = v[i];
		slot->tts_isnull[t->col[i]] = null[i];
	}
	ExecStoreVirtualTuple(slot);
	table_tuple_insert(t->rel, slot, t->cid, 0, NULL);
	if (t->rri->ri_NumIndices > 0)
		(void) ExecInsertIndexTuples(t->rri, slot, t->estate, false, false, NULL, NIL);
	MemoryContextSwitchTo(old);
	ResetPerTupleExprContext(t->estate);
}

/*
 * Insert spans from `buf` (at *off, *k of them in) with the SPI statement,
 * SPAN_STEP a statement, until `n` are in or, once `min_n` are, `yield`
 * says to stop.
 */
static void
spi_insert(char *buf, Size len, int n, MemoryContext cxt, bool (*yield) (void),
		   int min_n, Size *off, int *k)
{
	Oid			elemtypes[10] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID,
	INT8OID, TEXTOID, JSONBOID, TEXTOID, UUIDOID};
	Oid			arraytypes[10] = {TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		TIMESTAMPTZARRAYOID, INT8ARRAYOID, TEXTARRAYOID, JSONBARRAYOID, TEXTARRAYOID,
	UUIDARRAYOID};
	int16		typlen[10];
	bool		typbyval[10];
	char		typalign[10];
	MemoryContext stepcxt;

	for (int c = 0; c < 10; c++)
		get_typlenbyvalalign(elemtypes[c], &typlen[c], &typbyval[c], &typalign[c]);
	SPI_connect();
	stepcxt = AllocSetContextCreate(cxt, "maester span step", ALLOCSET_DEFAULT_SIZES);
	while (*k < n)
	{
		int			step = Min(SPAN_STEP, n - *k);
		Datum	   *cols[10];
		bool	   *nulls[10];
		Datum		args[10];
		int			i = 0;
		int			rc;
		MemoryContext was = MemoryContextSwitchTo(stepcxt);

		for (int c = 0; c < 10; c++)
		{
			cols[c] = palloc(sizeof(Datum) * step);
			nulls[c] = palloc(sizeof(bool) * step);
		}
		for (; *off < len && i < step; *off += ((SpanRecord *) (buf + *off))->len)
		{
			Datum		v[SPAN_NCOLS];
			bool		null[SPAN_NCOLS];

			span_values((SpanRecord *) (buf + *off), v, null);
			for (int c = 0; c < 10; c++)
			{
				cols[c][i] = v[c];
				nulls[c][i] = null[c];
			}
			i++;
		}
		for (int c = 0; c < 10; c++)
		{
			int			dims[1] = {i};
			int			lbs[1] = {1};

			args[c] = PointerGetDatum(construct_md_array(cols[c], nulls[c], 1, dims, lbs,
														 elemtypes[c], typlen[c], typbyval[c],
														 typalign[c]));
		}
		MemoryContextSwitchTo(was);
		rc = SPI_execute_plan(maester_kept_plan(&SpanPlan, SpanSql, 10, arraytypes),
							  args, NULL, false, 0);
		if (rc != SPI_OK_INSERT)
			elog(ERROR, "could not write spans: %s", SPI_result_code_string(rc));
		MemoryContextReset(stepcxt);
		*k += i;
		if (i < step)
			break;				/* (the buffer ended: cannot happen) */
		/* a ledger record waits: commit what is in, the rest next round */
		if (*k < n && *k >= min_n && yield != NULL && yield())
			break;
	}
	SPI_finish();
}

/*
 * Write the `n` spans in `buf` (SpanRecords) in one transaction, directly
 * (`direct`, when the table allows it) or with the SPI statement.  Once
 * `min_n` are in, `yield` (when given) says before each span (after each
 * statement) whether to stop early: the transaction then commits what it
 * has inserted, and *done_len / *done_n tell how much of `buf` that was
 * (all of it, unless it yielded; nothing when it failed).  A direct chunk
 * that fails is tried again at once with the statement.
 */
static SpanWrite
write_spans(char *buf, Size len, int n, MemoryContext cxt, bool (*yield) (void),
			int min_n, bool direct, Size *done_len, int *done_n)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	volatile SpanWrite result = SPANS_WRITTEN;
	volatile bool tried_direct = false;

	*done_len = 0;
	*done_n = 0;
	PG_TRY();
	{
		SpanTarget	t;
		Size		off = 0;
		int			k = 0;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		maester_check_catalog();
		(void) set_config_option("synchronous_commit", "off", PGC_SUSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
		(void) set_config_option("lock_timeout", SPAN_LOCK_TIMEOUT, PGC_SUSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
		PushActiveSnapshot(GetTransactionSnapshot());
		if (direct && direct_open(&t))
		{
			tried_direct = true;
			while (k < n && off < len)
			{
				/* a ledger record waits: commit what is in, the rest next round */
				if (k >= min_n && yield != NULL && yield())
					break;
				direct_insert(&t, (SpanRecord *) (buf + off));
				off += ((SpanRecord *) (buf + off))->len;
				k++;
			}
			direct_close(&t);
		}
		else
			spi_insert(buf, len, n, cxt, yield, min_n, &off, &k);
		PopActiveSnapshot();
		CommitTransactionCommand();
		if (tried_direct)
			DirectFailedLogged = false;
		*done_len = off;
		*done_n = k;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		maester_rethrow_if_worker_error(edata);
		if (edata->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE)
			result = SPANS_LOCKED;
		else if (tried_direct)
		{
			if (!DirectFailedLogged)
				ereport(LOG,
						(errmsg("maester worker writes a chunk of spans with INSERT ... ON CONFLICT DO NOTHING: %s",
								edata->message),
						 errdetail("Storing them directly failed.  This is not logged again until storing a chunk directly succeeds.")));
			DirectFailedLogged = true;
			result = SPANS_FAILED;
		}
		else
		{
			ereport(WARNING,
					(errmsg("maester worker dropped %d spans: %s", n, edata->message)));
			result = SPANS_FAILED;
		}
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	if (result == SPANS_FAILED && tried_direct)
		return write_spans(buf, len, n, cxt, yield, min_n, false, done_len, done_n);
	return result;
}

/*
 * Write a chunk of up to SPAN_CHUNK waiting spans when they are due:
 * SPAN_NAP_MS after the first one came, or at once when the queue is half
 * full (or `all`, on the way out).  The chunk does not start, and stops
 * before a span, when `yield` says a ledger record waits (a caller waits
 * for it); what is left of it is written at the next round.  But above
 * half full, spans go in before it may stop, the more the fuller the span
 * queue (SPAN_STEP more per 1/64 of the queue: 136 at three quarters, 264
 * full), so that under load, when a ledger record always waits, spans
 * keep up instead of being dropped.  Returns how long until spans are due
 * (ms), -1 when none wait.
 */
long
spans_write_due(LedgerSlot *slot, bool all, bool (*yield) (void), MemoryContext cxt)
{
	uint64		queued;
	TimestampTz now = GetCurrentTimestamp();

	if (SpanBuf == NULL)
		SpanBuf = MemoryContextAllocHuge(TopMemoryContext, ledger_shared->span_bytes);
	if (SpanLen > 0 && !all && now < RetryAt)
		return Max((long) ((RetryAt - now + 999) / 1000), 1);

	LWLockAcquire(slot->lock, LW_SHARED);
	queued = slot->span_head - slot->span_tail;
	LWLockRelease(slot->lock);
	if (queued == 0 && SpanLen == 0)
	{
		GatherSince = 0;
		return -1;
	}
	if (SpanLen == 0)
	{
		if (GatherSince == 0)
			GatherSince = now;
		if (!all && queued < ledger_shared->span_bytes / 2 &&
			!TimestampDifferenceExceeds(GatherSince, now, SPAN_NAP_MS))
			return Max(SPAN_NAP_MS - (long) TimestampDifferenceMilliseconds(GatherSince, now), 1);
		SpanOff = 0;
		SpanLen = span_take(slot, SpanBuf, ledger_shared->span_bytes, SPAN_CHUNK);
		SpanCount = 0;
		for (Size off = 0; off < SpanLen; off += ((SpanRecord *) (SpanBuf + off))->len)
			SpanCount++;
	}
	if (all)
		yield = NULL;
	if (SpanCount > 0)
	{
		SpanWrite	w;
		Size		done_len;
		int			done_n;

		int			min_n = 0;

		/* above half full, spans go in before a ledger record may stop them */
		if (queued > ledger_shared->span_bytes / 2)
			min_n = SPAN_STEP * (1 + (int) ((queued - ledger_shared->span_bytes / 2) * 64 /
											ledger_shared->span_bytes));
		/* a ledger record waits already: it goes first */
		if (min_n == 0 && yield != NULL && yield())
			return 0;
		MemoryContextReset(cxt);
		w = write_spans(SpanBuf + SpanOff, SpanLen - SpanOff, SpanCount, cxt, yield, min_n,
						true, &done_len, &done_n);
		if (w == SPANS_LOCKED && !all)
		{
			RetryAt = now + (TimestampTz) SPAN_RETRY_MS * 1000;
			return SPAN_RETRY_MS;
		}
		LWLockAcquire(slot->lock, LW_EXCLUSIVE);
		if (w == SPANS_WRITTEN)
			slot->spans_written += done_n;
		else
			slot->spans_dropped += SpanCount;
		LWLockRelease(slot->lock);
		if (w == SPANS_WRITTEN && done_n < SpanCount)
		{
			/* it yielded: the rest of the chunk is due at the next round */
			SpanOff += done_len;
			SpanCount -= done_n;
			return 0;
		}
	}
	SpanLen = 0;
	SpanOff = 0;
	SpanCount = 0;
	/* more waiting: the next chunk is due at once (at the next round) */
	LWLockAcquire(slot->lock, LW_SHARED);
	queued = slot->span_head - slot->span_tail;
	LWLockRelease(slot->lock);
	if (queued == 0)
		GatherSince = 0;
	return queued > 0 ? 0 : -1;
}

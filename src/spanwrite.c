/*-------------------------------------------------------------------------
 *
 * spanwrite.c
 *	  The resident worker's writing of spans: from the span queue to
 *	  maester.span, in batches, without waiting for a flush.
 *
 * Spans gather in the queue for SPAN_NAP_MS after the first one (or until
 * the queue is half full), then go in chunks of at most SPAN_CHUNK spans,
 * one transaction each with synchronous_commit off (nobody waits for
 * spans), inserted SPAN_STEP at a time.  Between two inserts the chunk
 * stops (commits what is in) when a ledger record waits; the fuller the
 * span queue, the later: one insert is the most a ledger record waits
 * behind while spans keep up.  The resident worker writes
 * queued ledger records before each chunk, and a chunk waits at
 * most SPAN_LOCK_TIMEOUT for a lock on maester.span (someone's LOCK TABLE):
 * then it is kept and tried again SPAN_NAP_MS later, while new spans wait
 * in the queue (and are dropped, counted, when it is full).  A chunk that
 * cannot be written for another reason must not stop the worker: it is
 * dropped with a WARNING (and counted with the dropped spans).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
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
	"SELECT s.t, s.s, s.p, s.n, s.st, s.d, s.stat, s.a::pg_catalog.jsonb, s.ten, s.r "
	"FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), "
	"  pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6), "
	"  pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9), "
	"  pg_catalog.unnest($10)) AS s(t, s, p, n, st, d, stat, a, ten, r) "
	"ON CONFLICT (trace_id, span_id) DO NOTHING";
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

/*
 * Write the `n` spans in `buf` (SpanRecords) in one transaction, in inserts
 * of SPAN_STEP spans.  Between inserts, once `min_n` are in, `yield` (when
 * given) says whether to stop early: the transaction then commits what it has inserted, and
 * *done_len / *done_n tell how much of `buf` that was (all of it, unless
 * it yielded; nothing when it failed).
 */
static SpanWrite
write_spans(char *buf, Size len, int n, MemoryContext cxt, bool (*yield) (void),
			int min_n, Size *done_len, int *done_n)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	volatile SpanWrite result = SPANS_WRITTEN;

	*done_len = 0;
	*done_n = 0;
	PG_TRY();
	{
		Oid			elemtypes[10] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID,
		INT8OID, TEXTOID, TEXTOID, TEXTOID, UUIDOID};
		Oid			arraytypes[10] = {TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
			TIMESTAMPTZARRAYOID, INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		UUIDARRAYOID};
		int16		typlen[10];
		bool		typbyval[10];
		char		typalign[10];
		MemoryContext stepcxt;
		Size		off = 0;
		int			k = 0;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		maester_check_catalog();
		/* (type lookups need the transaction) */
		for (int c = 0; c < 10; c++)
			get_typlenbyvalalign(elemtypes[c], &typlen[c], &typbyval[c], &typalign[c]);
		(void) set_config_option("synchronous_commit", "off", PGC_SUSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
		(void) set_config_option("lock_timeout", SPAN_LOCK_TIMEOUT, PGC_SUSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
		SPI_connect();
		stepcxt = AllocSetContextCreate(cxt, "maester span step", ALLOCSET_DEFAULT_SIZES);
		PushActiveSnapshot(GetTransactionSnapshot());
		while (k < n)
		{
			int			step = Min(SPAN_STEP, n - k);
			Datum	   *cols[10];
			bool	   *nulls[10];
			Datum		args[10];
			int			i = 0;
			int			rc;
			MemoryContext was = MemoryContextSwitchTo(stepcxt);

			for (int c = 0; c < 10; c++)
			{
				cols[c] = palloc(sizeof(Datum) * step);
				nulls[c] = palloc0(sizeof(bool) * step);
			}
			for (; off < len && i < step; off += ((SpanRecord *) (buf + off))->len)
			{
				SpanRecord *r = (SpanRecord *) (buf + off);
				pg_uuid_t  *u;

				cols[0][i] = CStringGetTextDatum(r->trace_id);
				cols[1][i] = CStringGetTextDatum(r->span_id);
				cols[2][i] = CStringGetTextDatum(r->parent_span_id);
				nulls[2][i] = r->parent_span_id[0] == '\0';
				cols[3][i] = CStringGetTextDatum(r->name);
				cols[4][i] = TimestampTzGetDatum(r->ts);
				cols[5][i] = Int64GetDatum(r->duration_us);
				cols[6][i] = CStringGetTextDatum(r->status);
				cols[7][i] = CStringGetTextDatum(r->attrs[0] ? r->attrs : "{}");
				cols[8][i] = CStringGetTextDatum(r->tenant);
				u = palloc(sizeof(pg_uuid_t));
				*u = r->request_id;
				cols[9][i] = UUIDPGetDatum(u);
				nulls[9][i] = !r->has_request_id;
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
			k += i;
			if (i < step)
				break;			/* (the buffer ended: cannot happen) */
			/* a ledger record waits: commit what is in, the rest next round */
			if (k < n && k >= min_n && yield != NULL && yield())
				break;
		}
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
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
		else
		{
			ereport(WARNING,
					(errmsg("maester worker dropped %d spans: %s", n, edata->message)));
			result = SPANS_FAILED;
		}
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	return result;
}

/*
 * Write a chunk of up to SPAN_CHUNK waiting spans when they are due:
 * SPAN_NAP_MS after the first one came, or at once when the queue is half
 * full (or `all`, on the way out).  The chunk stops between inserts when
 * `yield` says a ledger record waits (a caller waits for it), what is left
 * of it is written at the next round; but the fuller the span queue, the
 * more spans go in before it may stop (one insert up to half full, then
 * one more per 1/64 of the queue: 17 at three quarters, 33 full): spans keep
 * up under load instead of being dropped.  Returns how long until spans are
 * due (ms), -1 when none wait.
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

		MemoryContextReset(cxt);
		w = write_spans(SpanBuf + SpanOff, SpanLen - SpanOff, SpanCount, cxt, yield,
						SPAN_STEP * (int) (1 + (queued > ledger_shared->span_bytes / 2 ?
												(queued - ledger_shared->span_bytes / 2) * 64 /
												ledger_shared->span_bytes : 0)),
						&done_len, &done_n);
		if (w == SPANS_LOCKED && !all)
		{
			RetryAt = now + (TimestampTz) SPAN_NAP_MS * 1000;
			return SPAN_NAP_MS;
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

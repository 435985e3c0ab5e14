/*-------------------------------------------------------------------------
 *
 * spanwrite.c
 *	  The resident worker's writing of spans: from the span queue to
 *	  maester.span, in batches, without waiting for a flush.
 *
 * Spans gather in the queue for SPAN_NAP_MS after the first one (or until
 * the queue is half full), then go in multi-row inserts of at most
 * SPAN_CHUNK spans -- SPAN_CHUNK_BUSY while ledger records keep coming,
 * unless the queue is more than a quarter full --,
 * with synchronous_commit off (nobody waits for spans).
 * A chunk is the most the ledger ever waits behind: the resident worker
 * writes queued ledger records before each chunk, and a chunk waits at
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
static char *SpanBuf = NULL;
static Size SpanLen = 0;		/* a chunk taken, not yet written */
static int	SpanCount = 0;
static TimestampTz GatherSince = 0;	/* the first span waiting, 0: none */
static TimestampTz RetryAt = 0;		/* the kept chunk is tried again then */

typedef enum SpanWrite
{
	SPANS_WRITTEN,
	SPANS_LOCKED,				/* maester.span is locked: try again later */
	SPANS_FAILED
} SpanWrite;

/* Write the `n` spans in `buf` (SpanRecords) in one transaction */
static SpanWrite
write_spans(char *buf, Size len, int n, MemoryContext cxt)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	volatile SpanWrite result = SPANS_WRITTEN;

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
		for (Size off = 0; off < len && k < n; off += ((SpanRecord *) (buf + off))->len)
		{
			SpanRecord *r = (SpanRecord *) (buf + off);
			pg_uuid_t  *u;

			cols[0][k] = CStringGetTextDatum(r->trace_id);
			cols[1][k] = CStringGetTextDatum(r->span_id);
			cols[2][k] = CStringGetTextDatum(r->parent_span_id);
			nulls[2][k] = r->parent_span_id[0] == '\0';
			cols[3][k] = CStringGetTextDatum(r->name);
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
		(void) set_config_option("lock_timeout", SPAN_LOCK_TIMEOUT, PGC_SUSET, PGC_S_SESSION,
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
 * Write a chunk of up to `max_spans` waiting spans when they are due:
 * SPAN_NAP_MS after the first one came, or at once when the queue is half
 * full (or `all`, on the way out).  Returns how long until spans are due (ms), -1 when none wait.
 */
long
spans_write_due(LedgerSlot *slot, bool all, int max_spans, MemoryContext cxt)
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
		/* a queue filling up takes big chunks, busy or not: better than dropping */
		if (queued > ledger_shared->span_bytes / 4)
			max_spans = Max(max_spans, SPAN_CHUNK);
		SpanLen = span_take(slot, SpanBuf, ledger_shared->span_bytes, max_spans);
		SpanCount = 0;
		for (Size off = 0; off < SpanLen; off += ((SpanRecord *) (SpanBuf + off))->len)
			SpanCount++;
	}
	if (SpanCount > 0)
	{
		SpanWrite	w;

		MemoryContextReset(cxt);
		w = write_spans(SpanBuf, SpanLen, SpanCount, cxt);
		if (w == SPANS_LOCKED && !all)
		{
			RetryAt = now + (TimestampTz) SPAN_NAP_MS * 1000;
			return SPAN_NAP_MS;
		}
		LWLockAcquire(slot->lock, LW_EXCLUSIVE);
		if (w == SPANS_WRITTEN)
			slot->spans_written += SpanCount;
		else
			slot->spans_dropped += SpanCount;
		LWLockRelease(slot->lock);
	}
	SpanLen = 0;
	SpanCount = 0;
	/* more waiting: the next chunk is due at once (at the next round) */
	LWLockAcquire(slot->lock, LW_SHARED);
	queued = slot->span_head - slot->span_tail;
	LWLockRelease(slot->lock);
	if (queued == 0)
		GatherSince = 0;
	return queued > 0 ? 0 : -1;
}

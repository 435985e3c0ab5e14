/*-------------------------------------------------------------------------
 *
 * export.c
 *	  OTLP export: the spans of a database posted as OTLP/HTTP JSON to
 *	  maester.otlp_endpoint, by the database's resident worker.
 *
 * A state machine stepped at every round of the resident worker's loop,
 * so that a slow collector never holds up the ledger: when spans were
 * written after the exporter's watermark (maester.span.seq), it builds the
 * next payload of up to OTLP_BATCH spans with maester.otlp_payload() and
 * posts it to {endpoint}/v1/traces on the worker's curl handle (the
 * gateway's egress policy applies); 429, 502, 503, 504 and connection
 * failures are retried OTLP_ATTEMPTS times, after the collector's
 * Retry-After (at most OTLP_MAX_BACKOFF_MS) or a growing backoff; then the
 * batch is dropped and counted.  The exporter starts from the spans
 * written after it started (max(seq) then).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "export.h"
#include "http.h"
#include "ledger.h"
#include "settings.h"
#include "util.h"

#define OTLP_BATCH 512
#define OTLP_ATTEMPTS 3
#define OTLP_MAX_BACKOFF_MS 5000
#define OTLP_TIMEOUT_MS 10000
#define OTLP_POLL_MS 1000

/* Run one query returning one bigint (or NULL: 0) in its own transaction */
static int64
query_int8(const char *sql)
{
	int64		result = 0;
	bool		isnull;
	Datum		d;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_execute(sql, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "maester OTLP exporter: \"%s\" failed", sql);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		result = DatumGetInt64(d);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return result;
}

/*
 * The next batch after `after`: its payload (in `cxt`) and span count;
 * *last is the seq of its last span.
 */
static char *
next_batch(int64 after, MemoryContext cxt, int *nspans, int64 *last)
{
	Datum		args[1] = {Int64GetDatum(after)};
	Oid			types[1] = {INT8OID};
	char	   *payload = NULL;
	bool		isnull;

	*nspans = 0;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	maester_check_catalog();	/* the catalog must still be ours */
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_execute_with_args("SELECT payload, spans, last_seq FROM maester.otlp_payload($1, "
							  CppAsString2(OTLP_BATCH) ")",
							  1, types, args, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "maester OTLP exporter: maester.otlp_payload failed");
	*nspans = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	if (*nspans > 0)
	{
		char	   *text = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		payload = MemoryContextStrdup(cxt, text);
		*last = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return payload;
}

/* maester.otlp_headers ("a=b,c=d", checked when set) as "a: b", "c: d" */
static struct curl_slist *
add_configured_headers(struct curl_slist *list)
{
	char	   *copy = pstrdup(maester_otlp_headers ? maester_otlp_headers : "");
	size_t		copylen = strlen(copy);
	char	   *pair = copy;

	while (pair != NULL && *pair != '\0')
	{
		char	   *next = strchr(pair, ',');
		char	   *eq = strchr(pair, '=');
		char	   *line;

		if (next != NULL)
			*next++ = '\0';
		if (eq != NULL)
		{
			*eq = '\0';
			line = psprintf("%s: %s", pair, eq + 1);
			list = curl_slist_append(list, line);
			/* the line may hold a key: do not leave it in memory */
			explicit_bzero(line, strlen(line));
			pfree(line);
		}
		pair = next;
	}
	explicit_bzero(copy, copylen);
	pfree(copy);
	return list;
}


/* Add to the slot's export counters */
static void
count(LedgerSlot *slot, int64 exported, int64 dropped, int64 failed_posts)
{
	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	slot->otlp_exported += exported;
	slot->otlp_dropped += dropped;
	slot->otlp_failed_posts += failed_posts;
	LWLockRelease(slot->lock);
}

void
export_init(Exporter *e, LedgerSlot *slot)
{
	memset(e, 0, sizeof(*e));
	e->slot = slot;
	e->cxt = AllocSetContextCreate(TopMemoryContext, "maester OTLP export",
								   ALLOCSET_DEFAULT_SIZES);
}

/* Free the request of the post in flight, if any */
static void
release_post(Exporter *e)
{
	if (!e->live)
		return;
	http_abort(&e->req);
	for (struct curl_slist *h = e->req.headers; h; h = h->next)
		explicit_bzero(h->data, strlen(h->data));
	http_request_cleanup(&e->req);
	e->live = false;
}

/* Start posting the current payload; false when it could not be started */
static bool
start_post(Exporter *e)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ok = true;
	int			len = (int) strlen(maester_otlp_endpoint);

	/* {endpoint}/v1/traces, without a doubled slash */
	while (len > 0 && maester_otlp_endpoint[len - 1] == '/')
		len--;
	e->url = MemoryContextStrdup(e->cxt, psprintf("%.*s/v1/traces", len, maester_otlp_endpoint));
	http_request_init(&e->req);
	PG_TRY();
	{
		http_check_url(e->url, &e->req.allow_private);
		e->req.url = e->url;
		e->req.body = e->payload;
		e->req.body_len = strlen(e->payload);
		e->req.connect_timeout_ms = Min(OTLP_TIMEOUT_MS, maester_request_timeout_ms);
		e->req.timeout_ms = OTLP_TIMEOUT_MS;
		e->req.headers = curl_slist_append(NULL, "Content-Type: application/json");
		e->req.headers = curl_slist_append(e->req.headers, "Expect:");
		e->req.headers = add_configured_headers(e->req.headers);
		e->live = true;
		http_submit(&e->req);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED || edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
			ReThrowError(edata);
		ereport(LOG,
				(errmsg("maester OTLP exporter could not post to \"%s\": %s", e->url, edata->message)));
		FreeErrorData(edata);
		release_post(e);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/* The batch is done with: sent, or dropped */
static void
batch_done(Exporter *e, bool sent, int failed_posts)
{
	count(e->slot, sent ? e->nspans : 0, sent ? 0 : e->nspans, failed_posts);
	e->watermark = e->last;
	e->state = EXPORT_IDLE;
	/* a full batch: more may wait */
	e->next_at = e->nspans == OTLP_BATCH ? 0 :
		GetCurrentTimestamp() + (TimestampTz) OTLP_POLL_MS * 1000;
	e->nspans = 0;
}

/* A post finished: sent, retried, or given up */
static void
post_finished(Exporter *e)
{
	HttpRequest *req = &e->req;
	bool		retry;
	long		wait_ms = 1000L * e->attempt;

	if (req->outcome == HTTP_OK && req->status >= 200 && req->status < 300)
	{
		release_post(e);
		batch_done(e, true, 0);
		return;
	}
	retry = (req->outcome == HTTP_OK)
		? (req->status == 429 || req->status == 502 || req->status == 503 || req->status == 504)
		: (req->outcome == HTTP_CONNECT_FAILED || req->outcome == HTTP_TIMEOUT ||
		   req->outcome == HTTP_NETWORK_ERROR);
	if (req->outcome == HTTP_OK && req->retry_after_ms >= 0)
		wait_ms = Min((long) req->retry_after_ms, OTLP_MAX_BACKOFF_MS);
	if (!retry || e->attempt >= OTLP_ATTEMPTS)
	{
		if (req->outcome == HTTP_OK)
			ereport(LOG,
					(errmsg("maester OTLP exporter: the collector at \"%s\" answered HTTP %ld; spans dropped",
							e->url, req->status)));
		else
			ereport(LOG,
					(errmsg("maester OTLP exporter could not post to \"%s\": %s; spans dropped",
							e->url, req->error)));
		release_post(e);
		batch_done(e, false, 1);
		return;
	}
	release_post(e);
	count(e->slot, 0, 0, 1);
	e->state = EXPORT_BACKOFF;
	e->next_at = GetCurrentTimestamp() + (TimestampTz) wait_ms * 1000;
}

/* One step of the exporter, at a round of the resident worker */
void
export_step(Exporter *e)
{
	TimestampTz now;

	if (maester_otlp_endpoint == NULL || maester_otlp_endpoint[0] == '\0')
	{
		if (e->started)
		{
			release_post(e);
			e->started = false;
			e->state = EXPORT_IDLE;
			ereport(LOG, (errmsg("maester OTLP exporter for database %u stopped", MyDatabaseId)));
		}
		return;
	}
	if (!e->started)
	{
		e->watermark = query_int8("SELECT max(seq) FROM maester.span");
		e->started = true;
		e->state = EXPORT_IDLE;
		e->next_at = 0;
		ereport(LOG,
				(errmsg("maester OTLP exporter for database %u sends spans after seq " INT64_FORMAT " to \"%s\"",
						MyDatabaseId, e->watermark, maester_otlp_endpoint)));
	}
	now = GetCurrentTimestamp();
	switch (e->state)
	{
		case EXPORT_IDLE:
			if (now < e->next_at)
				return;
			MemoryContextReset(e->cxt);
			e->payload = next_batch(e->watermark, e->cxt, &e->nspans, &e->last);
			if (e->nspans == 0)
			{
				e->next_at = now + (TimestampTz) OTLP_POLL_MS * 1000;
				return;
			}
			e->attempt = 1;
			if (start_post(e))
				e->state = EXPORT_POSTING;
			else
				batch_done(e, false, 1);	/* a refused endpoint does not get better */
			return;
		case EXPORT_POSTING:
			if (e->req.done)
				post_finished(e);
			return;
		case EXPORT_BACKOFF:
			if (now < e->next_at)
				return;
			e->attempt++;
			if (start_post(e))
				e->state = EXPORT_POSTING;
			else
				batch_done(e, false, 1);
			return;
	}
}

/* How long until the exporter has something to do (ms), -1: not before a wakeup */
long
export_wait_ms(Exporter *e)
{
	if (!e->started || e->state == EXPORT_POSTING)
		return e->started && e->req.done ? 0 : -1;
	return (long) Max((e->next_at - GetCurrentTimestamp() + 999) / 1000, 0);
}

/* The worker stops: a post in flight is abandoned */
void
export_abort(Exporter *e)
{
	release_post(e);
}

PG_FUNCTION_INFO_V1(trace_status);

/* maester.trace_status(): this database's span writer and exporter counters */
Datum
trace_status(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};
	LedgerSlot *slot;
	int64		v[5] = {0, 0, 0, 0, 0};

	maester_check_catalog();
	maester_require_preload();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	slot = slot_find(MyDatabaseId);
	if (slot != NULL)
	{
		LWLockAcquire(slot->lock, LW_SHARED);
		v[0] = slot->spans_waiting;
		v[1] = slot->spans_dropped;
		v[2] = slot->otlp_exported;
		v[3] = slot->otlp_dropped;
		v[4] = slot->otlp_failed_posts;
		LWLockRelease(slot->lock);
	}
	for (int i = 0; i < 5; i++)
		values[i] = Int64GetDatum(v[i]);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

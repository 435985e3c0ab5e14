/*-------------------------------------------------------------------------
 *
 * otlp.c
 *	  The OTLP exporter: ships maester.span to an OpenTelemetry collector.
 *
 * When maester.otlp_endpoint is set, the launcher runs one exporter per
 * database that has a ledger slot.  The exporter starts at the spans
 * written from then on (the table keeps the older ones; nothing is sent
 * twice within a server life), and loops: build the OTLP/HTTP JSON of the
 * next spans with maester.otlp_payload() in a short read-only transaction,
 * commit, POST it to {endpoint}/v1/traces through the gateway's HTTP code
 * (same egress rules, same timeouts), and move on.  A collector that
 * answers 429, 502, 503 or 504, or cannot be reached, is tried three times
 * (honouring Retry-After up to 5 seconds); then the batch is dropped and
 * counted.  Export never slows a call: the table is the source of truth,
 * the collector a copy.  maester.trace_status() shows the counters.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/wait_event.h"

#include "catalog.h"
#include "http.h"
#include "ledger.h"
#include "settings.h"
#include "util.h"
#include "worker.h"

#define OTLP_BATCH 512
#define OTLP_ATTEMPTS 3
#define OTLP_MAX_BACKOFF_MS 5000
#define OTLP_TIMEOUT_MS 10000

PGDLLEXPORT void maester_otlp_main(Datum arg);

static LedgerSlot *ExporterSlot = NULL;

/* The slot of this database, or NULL */
static LedgerSlot *
find_slot(void)
{
	for (int i = 0; i < ledger_shared->nslots; i++)
	{
		LedgerSlot *slot = ledger_slot(i);
		bool		mine;

		LWLockAcquire(slot->lock, LW_SHARED);
		mine = slot->dboid == MyDatabaseId;
		LWLockRelease(slot->lock);
		if (mine)
			return slot;
	}
	return NULL;
}

static void
exporter_exit(int code, Datum arg)
{
	if (ExporterSlot == NULL)
		return;
	LWLockAcquire(ExporterSlot->lock, LW_EXCLUSIVE);
	if (ExporterSlot->exporter_pid == MyProcPid)
		ExporterSlot->exporter_pid = 0;
	LWLockRelease(ExporterSlot->lock);
}

static void
count(int64 exported, int64 dropped, int64 failed_posts)
{
	LWLockAcquire(ExporterSlot->lock, LW_EXCLUSIVE);
	ExporterSlot->otlp_exported += exported;
	ExporterSlot->otlp_dropped += dropped;
	ExporterSlot->otlp_failed_posts += failed_posts;
	LWLockRelease(ExporterSlot->lock);
}

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

/* Sleep `ms` unless told to stop; false when the exporter should exit */
static bool
nap(long ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
	return maester_otlp_endpoint[0] != '\0';
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

/*
 * POST one payload; true when the collector took it.  Errors (the egress
 * policy refusing the endpoint, say) are logged, not thrown: the exporter
 * keeps running and counts the batch as dropped.
 */
static bool
post(const char *payload, int *failed_posts)
{
	int			len = (int) strlen(maester_otlp_endpoint);
	char	   *url;

	/* {endpoint}/v1/traces, without a doubled slash */
	while (len > 0 && maester_otlp_endpoint[len - 1] == '/')
		len--;
	url = psprintf("%.*s/v1/traces", len, maester_otlp_endpoint);

	for (int attempt = 1; attempt <= OTLP_ATTEMPTS; attempt++)
	{
		HttpRequest req;
		MemoryContext cxt = CurrentMemoryContext;
		volatile bool threw = false;
		bool		retry;
		long		wait_ms = 1000L * attempt;

		http_request_init(&req);
		PG_TRY();
		{
			HttpRequest *one = &req;

			http_check_url(url, &req.allow_private);
			req.url = url;
			req.body = payload;
			req.body_len = strlen(payload);
			req.connect_timeout_ms = Min(OTLP_TIMEOUT_MS, maester_request_timeout_ms);
			req.timeout_ms = OTLP_TIMEOUT_MS;
			req.headers = curl_slist_append(NULL, "Content-Type: application/json");
			req.headers = curl_slist_append(req.headers, "Expect:");
			req.headers = add_configured_headers(req.headers);
			http_perform(&one, 1);
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			MemoryContextSwitchTo(cxt);
			edata = CopyErrorData();
			FlushErrorState();
			ereport(LOG,
					(errmsg("maester OTLP exporter could not post to \"%s\": %s",
							url, edata->message)));
			FreeErrorData(edata);
			threw = true;
		}
		PG_END_TRY();

		if (threw)
		{
			http_request_cleanup(&req);
			(*failed_posts)++;
			return false;		/* a refused endpoint does not get better */
		}
		if (req.outcome == HTTP_OK && req.status >= 200 && req.status < 300)
		{
			http_request_cleanup(&req);
			return true;
		}
		(*failed_posts)++;
		retry = (req.outcome == HTTP_OK)
			? (req.status == 429 || req.status == 502 || req.status == 503 || req.status == 504)
			: (req.outcome == HTTP_CONNECT_FAILED || req.outcome == HTTP_TIMEOUT ||
			   req.outcome == HTTP_NETWORK_ERROR);
		if (req.outcome == HTTP_OK && req.retry_after_ms >= 0)
			wait_ms = Min((long) req.retry_after_ms, OTLP_MAX_BACKOFF_MS);
		if (!retry || attempt == OTLP_ATTEMPTS)
		{
			if (req.outcome == HTTP_OK)
				ereport(LOG,
						(errmsg("maester OTLP exporter: the collector at \"%s\" answered HTTP %ld; spans dropped",
								url, req.status)));
			else
				ereport(LOG,
						(errmsg("maester OTLP exporter could not post to \"%s\": %s; spans dropped",
								url, req.error)));
			http_request_cleanup(&req);
			return false;
		}
		http_request_cleanup(&req);
		if (!nap(wait_ms))
			return false;
	}
	return false;
}

/* The exporter's main loop */
void
maester_otlp_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	LedgerSlot *slot;
	int64		watermark;
	MemoryContext cxt;
	bool		taken;

	pqsignal(SIGTERM, die);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	SetConfigOption("application_name", "maester OTLP exporter", PGC_USERSET, PGC_S_OVERRIDE);

	if (!maester_worker_wait_catalog("OTLP exporter") ||
		maester_otlp_endpoint[0] == '\0' || (slot = find_slot()) == NULL)
		proc_exit(0);

	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	taken = slot->exporter_pid == 0;
	if (taken)
		slot->exporter_pid = MyProcPid;
	LWLockRelease(slot->lock);
	if (!taken)
		proc_exit(0);
	ExporterSlot = slot;
	before_shmem_exit(exporter_exit, (Datum) 0);

	watermark = query_int8("SELECT max(seq) FROM maester.span");
	ereport(LOG,
			(errmsg("maester OTLP exporter for database %u sends spans after seq " INT64_FORMAT " to \"%s\"",
					dboid, watermark, maester_otlp_endpoint)));

	cxt = AllocSetContextCreate(TopMemoryContext, "maester OTLP batch", ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		char	   *payload;
		int			nspans;
		int64		last = watermark;
		int			failed = 0;
		MemoryContext old;

		MemoryContextReset(cxt);
		old = MemoryContextSwitchTo(cxt);
		pgstat_report_activity(STATE_RUNNING, "exporting spans");
		payload = next_batch(watermark, cxt, &nspans, &last);
		if (nspans > 0)
		{
			bool		sent = post(payload, &failed);

			count(sent ? nspans : 0, sent ? 0 : nspans, failed);
			watermark = last;
		}
		MemoryContextSwitchTo(old);
		if (nspans == OTLP_BATCH)
		{
			CHECK_FOR_INTERRUPTS();
			continue;			/* more waiting */
		}
		pgstat_report_activity(STATE_IDLE, NULL);
		if (!nap(1000))
			break;				/* endpoint unset */
	}
	proc_exit(0);
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
	slot = find_slot();
	if (slot != NULL)
	{
		LWLockAcquire(slot->lock, LW_SHARED);
		v[0] = (int64) (slot->span_head - slot->span_tail);
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

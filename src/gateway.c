/*-------------------------------------------------------------------------
 *
 * gateway.c
 *	  maester.llm_generate: one model call, from prompt to normalized
 *	  result, with retries, fallback and the circuit breaker.
 *
 * The path of a call:
 *	 1. the prompt: raw text, or rendered from the registry (its name,
 *		version and hash travel with the result);
 *	 2. the plan: router_plan() turns the requested model (or route; NULL is
 *		the route "default") into ordered targets;
 *	 3. for each target in order -- skipping disabled providers, providers
 *		whose circuit is open and providers whose key is not set -- up to
 *		max_attempts attempts: build the provider's request, send it over
 *		http.c, classify the outcome.  429, 500, 502, 503, 504, 529,
 *		connection failures and timeouts are retried after exponential
 *		backoff with jitter, or after the provider's Retry-After when it
 *		gave one (up to maester.retry_after_max_ms; longer than that, we
 *		fall back instead of waiting).  Other failures move on to the next
 *		target at once.  An overall deadline (options.timeout_ms, else
 *		maester.request_timeout_ms) bounds everything, backoff included;
 *	 4. the first success is normalized (usage estimated at 4 characters a
 *		token when the provider sent none), logged as the articles'
 *		model_routed line, and returned as maester.generation.
 * When every target failed, the error's SQLSTATE is that of the last
 * failure (class MG, see below) and its detail lists every attempt.
 *
 * Waiting -- on the network and between attempts -- is always on the
 * latch, with CHECK_FOR_INTERRUPTS() at each wake-up, so cancel,
 * statement_timeout and termination act at once.
 *
 * Keys are fetched per call, put only into a curl header list, and wiped
 * from our memory and curl's list afterwards; error details summarize a
 * provider's body with the key masked.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "funcapi.h"
#include "lib/ilist.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"
#include "utils/wait_event.h"

#include "budget.h"
#include "call.h"
#include "http.h"
#include "ledger.h"
#include "maester.h"
#include "template.h"
#include "provider.h"
#include "router.h"
#include "trace.h"

static int64 estimate_tokens(const char *s);

/* SQLSTATEs of gateway failures (class MG, "maester gateway") */
#define ERRCODE_MAESTER_PROVIDER_ERROR	MAKE_SQLSTATE('M','G','0','0','1')
#define ERRCODE_MAESTER_TIMEOUT			MAKE_SQLSTATE('M','G','0','0','2')
#define ERRCODE_MAESTER_UNREACHABLE		MAKE_SQLSTATE('M','G','0','0','3')
#define ERRCODE_MAESTER_BAD_RESPONSE	MAKE_SQLSTATE('M','G','0','0','4')
#define ERRCODE_MAESTER_UNAVAILABLE		MAKE_SQLSTATE('M','G','0','0','5')

/* generate_batch: most requests in flight at once */
#define MAESTER_MAX_CONCURRENCY 256

#define KNOWN_OPTIONS "temperature, top_p, stop, response_format, timeout_ms, max_attempts, fallback, tags"

/* Per-call options, from the options jsonb */
typedef struct CallOptions
{
	GenRequest	gen;			/* temperature, top_p, stop, json_format */
	int			timeout_ms;		/* overall deadline */
	int			max_attempts;	/* 0: each provider's own */
	bool		fallback;
	char	   *tags;			/* JSON text of options.tags, or NULL */
} CallOptions;

/* One failed attempt (or skipped target), for the error detail */
typedef struct Failure
{
	const char *error_class;	/* rate_limited, server_error, timeout, ... */
	int			sqlstate;
	bool		retryable;
	bool		counts;			/* says something about provider health */
	bool		fatal;			/* stop the call: trying elsewhere cannot help */
	char	   *message;
	char	   *detail;			/* for fatal failures: their own detail, hint */
	const char *hint;
	double		retry_after_ms;
	int			http_status;
} Failure;

/* Everything llm_generate returns */
typedef struct Generation
{
	pg_uuid_t	request_id;
	char		trace_id[33];
	const char *provider;
	const char *model;
	GenResponse resp;
	bool		usage_estimated;
	double		latency_ms;
	int			attempts;
	bool		fallback_used;
	const char *prompt_name;
	const char *prompt_version;
	char		prompt_hash[MAESTER_SHA256_HEXLEN + 1];
	const char *requested_model;
	Numeric		cost;			/* exact cost of the successful attempt */
	bool		priced;
	const char *tags;			/* options.tags as JSON text, or NULL */
	Jsonb	   *checks;			/* the prompt version's checks, or NULL */
	Jsonb	   *evaluation;		/* maester.evaluate's result */
	CallTrace  *trace;			/* the call's spans */
	const char *last_provider;	/* the last target tried, for statistics */
	const char *last_model;
	const char *traceparent;	/* header value for the current attempt */
} Generation;

/* State of one call across its targets */
typedef struct CallState
{
	LedgerSlot *slot;			/* this database's ledger queue */
	char	   *downgrade_to;	/* a budget asked for this model instead */
	bool		downgraded;
	int64		est_input_tokens;	/* for the worst-case estimate */
	int			est_output_tokens;
	TimestampTz deadline;
	StringInfoData log;			/* "provider: class; ..." for the error detail */
	Failure		last;			/* the last failure */
} CallState;

/* Raise 22023 for a bad option */
static void
option_error(const char *key, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("option \"%s\" must be %s", key, what)));
}

/* A numeric option value as double */
static double
option_number(JsonbValue *v, const char *key, double min, double max)
{
	double		d;

	if (v->type != jbvNumeric)
		option_error(key, psprintf("a number between %g and %g", min, max));
	d = DatumGetFloat8(DirectFunctionCall1(numeric_float8,
										   NumericGetDatum(v->val.numeric)));
	if (!(d >= min && d <= max))
		option_error(key, psprintf("a number between %g and %g", min, max));
	return d;
}

/* An integer option value */
static int
option_int(JsonbValue *v, const char *key, int min, int max)
{
	double		d = option_number(v, key, min, max);

	if (d != floor(d))
		option_error(key, psprintf("an integer between %d and %d", min, max));
	return (int) d;
}

/* Parse and check the options object */
static void
parse_options(Jsonb *opts, CallOptions *o)
{
	JsonbIterator *it;
	JsonbValue	k;
	JsonbIteratorToken tok;

	memset(o, 0, sizeof(*o));
	o->timeout_ms = maester_request_timeout_ms;
	o->fallback = true;
	if (opts == NULL)
		return;
	if (!JB_ROOT_IS_OBJECT(opts))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("options must be a JSON object"),
				 errhint("Known options: " KNOWN_OPTIONS ".")));

	it = JsonbIteratorInit(&opts->root);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		char	   *key;
		JsonbValue	v;

		if (tok != WJB_KEY)
			continue;
		key = pnstrdup(k.val.string.val, k.val.string.len);
		tok = JsonbIteratorNext(&it, &v, true);

		if (strcmp(key, "temperature") == 0)
		{
			o->gen.has_temperature = true;
			o->gen.temperature = option_number(&v, key, 0, 2);
		}
		else if (strcmp(key, "top_p") == 0)
		{
			o->gen.has_top_p = true;
			o->gen.top_p = option_number(&v, key, 0, 1);
		}
		else if (strcmp(key, "stop") == 0)
		{
			if (v.type == jbvString)
				o->gen.stop = list_make1(pnstrdup(v.val.string.val, v.val.string.len));
			else if (v.type == jbvBinary && JsonContainerIsArray(v.val.binary.data))
			{
				int			n = JsonContainerSize(v.val.binary.data);

				for (int i = 0; i < n; i++)
				{
					JsonbValue *e = getIthJsonbValueFromContainer(v.val.binary.data, i);

					if (e->type != jbvString)
						option_error(key, "a string or an array of strings");
					o->gen.stop = lappend(o->gen.stop,
										  pnstrdup(e->val.string.val, e->val.string.len));
				}
			}
			else
				option_error(key, "a string or an array of strings");
		}
		else if (strcmp(key, "response_format") == 0)
		{
			char	   *fmt = NULL;

			if (v.type == jbvString)
				fmt = pnstrdup(v.val.string.val, v.val.string.len);
			else if (v.type == jbvBinary)
				fmt = json_get_string(v.val.binary.data, "type");
			if (fmt && (strcmp(fmt, "json") == 0 || strcmp(fmt, "json_object") == 0))
				o->gen.json_format = true;
			else if (fmt && strcmp(fmt, "text") == 0)
				o->gen.json_format = false;
			else
				option_error(key, "\"json\", \"text\" or {\"type\": \"json_object\"}");
		}
		else if (strcmp(key, "timeout_ms") == 0)
			o->timeout_ms = option_int(&v, key, 1, INT_MAX);
		else if (strcmp(key, "max_attempts") == 0)
			o->max_attempts = option_int(&v, key, 1, 20);
		else if (strcmp(key, "fallback") == 0)
		{
			if (v.type != jbvBool)
				option_error(key, "a boolean");
			o->fallback = v.val.boolean;
		}
		else if (strcmp(key, "tags") == 0)
		{
			StringInfoData t;

			if (v.type != jbvBinary || !JsonContainerIsObject(v.val.binary.data))
				option_error(key, "a JSON object");
			initStringInfo(&t);
			jsonb_to_compact_text(&t, v.val.binary.data);
			if (t.len >= (int) sizeof(((LedgerRecord *) NULL)->tags))
				option_error(key, psprintf("a JSON object of less than %d bytes",
										   (int) sizeof(((LedgerRecord *) NULL)->tags)));
			o->tags = t.data;
		}
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown option \"%s\"", key),
					 errhint("Known options: " KNOWN_OPTIONS ".")));
	}
}

/* A fresh version-4 UUID and a W3C trace id (32 lowercase hex digits) */
static void
new_ids(pg_uuid_t *uuid, char *trace_id)
{
	uint8		t[16];

	if (!pg_strong_random(uuid->data, UUID_LEN) || !pg_strong_random(t, sizeof(t)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random values")));
	uuid->data[6] = (uuid->data[6] & 0x0f) | 0x40;
	uuid->data[8] = (uuid->data[8] & 0x3f) | 0x80;
	hex_encode((char *) t, sizeof(t), trace_id);
	trace_id[32] = '\0';
}

static double
elapsed_ms(TimestampTz since)
{
	return (double) (GetCurrentTimestamp() - since) / 1000.0;
}

/* Fill `f` for an HTTP status that is not a success */
static void
classify_status(long status, Failure *f)
{
	f->sqlstate = ERRCODE_MAESTER_PROVIDER_ERROR;
	f->counts = false;
	f->retryable = false;
	switch (status)
	{
		case 429:
			f->error_class = "rate_limited";
			f->retryable = f->counts = true;
			break;
		case 500:
		case 502:
		case 503:
		case 504:
			f->error_class = "server_error";
			f->retryable = f->counts = true;
			break;
		case 529:
			f->error_class = "overloaded";
			f->retryable = f->counts = true;
			break;
		case 401:
		case 403:
			f->error_class = "auth";
			break;
		case 404:
			f->error_class = "not_found";
			break;
		default:
			if (status >= 300 && status < 400)
			{
				f->error_class = "redirect";
				f->sqlstate = ERRCODE_MAESTER_BAD_RESPONSE;
			}
			else if (status >= 500)
			{
				f->error_class = "server_error";
				f->counts = true;
			}
			else
				f->error_class = "bad_request";
	}
}

/* The curl header list for one attempt; the key is copied into it */
static struct curl_slist *
build_headers(ProviderConf *p, const char *key, const pg_uuid_t *request_id,
			  const char *traceparent)
{
	struct curl_slist *h = NULL;
	char		line[1024];
	char		uuid[37];

	h = curl_slist_append(h, "Content-Type: application/json");
	h = curl_slist_append(h, "Accept: application/json");
	h = curl_slist_append(h, "Expect:");
	snprintf(uuid, sizeof(uuid),
			 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
			 request_id->data[0], request_id->data[1], request_id->data[2],
			 request_id->data[3], request_id->data[4], request_id->data[5],
			 request_id->data[6], request_id->data[7], request_id->data[8],
			 request_id->data[9], request_id->data[10], request_id->data[11],
			 request_id->data[12], request_id->data[13], request_id->data[14],
			 request_id->data[15]);
	snprintf(line, sizeof(line), "X-Request-Id: %s", uuid);
	h = curl_slist_append(h, line);
	if (p->kind == PROVIDER_ANTHROPIC)
	{
		snprintf(line, sizeof(line), "anthropic-version: %s",
				 p->anthropic_version ? p->anthropic_version : "2023-06-01");
		h = curl_slist_append(h, line);
	}
	if (key != NULL)
	{
		if (p->kind == PROVIDER_ANTHROPIC)
			snprintf(line, sizeof(line), "x-api-key: %s", key);
		else
			snprintf(line, sizeof(line), "Authorization: Bearer %s", key);
		h = curl_slist_append(h, line);
		explicit_bzero(line, sizeof(line));
	}
	if (traceparent)
	{
		snprintf(line, sizeof(line), "traceparent: %s", traceparent);
		h = curl_slist_append(h, line);
	}
	if (h == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	return h;
}

/* Wipe and free a header list (one of its lines may hold a key) */
static void
free_headers(HttpRequest *req)
{
	for (struct curl_slist *h = req->headers; h; h = h->next)
		explicit_bzero(h->data, strlen(h->data));
	curl_slist_free_all(req->headers);
	req->headers = NULL;
}

/*
 * The HTTP request of one attempt against one target: body, URL (checked
 * against the egress policy: raises 42501 or 22023), timeouts, and a header
 * list holding the key (wiped by free_headers).
 */
static void
attempt_build(RouteTarget *t, const GenRequest *gen, const char *key,
			  const pg_uuid_t *request_id, const char *traceparent,
			  long timeout_ms, HttpRequest *req)
{
	ProviderConf *p = t->provider;
	StringInfoData body;
	char	   *url = provider_url(p->kind, p->base_url);

	initStringInfo(&body);
	provider_build_body(p->kind, gen, &body);

	http_request_init(req);
	http_check_url(url, &req->allow_private);
	req->url = url;
	/* providers speak UTF-8, whatever the database's encoding */
	req->body = pg_server_to_any(body.data, body.len, PG_UTF8);
	req->body_len = strlen(req->body);
	req->connect_timeout_ms = Min((long) p->connect_timeout_ms, timeout_ms);
	req->timeout_ms = timeout_ms;
	req->headers = build_headers(p, key, request_id, traceparent);
}

/*
 * How a finished attempt ended: true with `out` filled on success; false
 * with `f` filled otherwise.  `key` (may be NULL) is masked in the error
 * summaries of provider bodies.
 */
static bool
attempt_result(RouteTarget *t, HttpRequest *req, const char *key,
			   GenResponse *out, Failure *f)
{
	ProviderConf *p = t->provider;

	memset(f, 0, sizeof(*f));
	f->retry_after_ms = -1;
	switch (req->outcome)
	{
		case HTTP_OK:
			if (req->status >= 200 && req->status < 300)
			{
				char	   *problem = NULL;

				if (req->content_type[0] != '\0' &&
					strstr(req->content_type, "json") == NULL)
				{
					f->error_class = "bad_response";
					f->sqlstate = ERRCODE_MAESTER_BAD_RESPONSE;
					f->counts = true;
					f->message = psprintf("%s answered with content type \"%s\", not JSON",
										  p->name, req->content_type);
				}
				else if (!pg_verify_mbstr(PG_UTF8, req->response, req->response_len, true))
				{
					f->error_class = "bad_response";
					f->sqlstate = ERRCODE_MAESTER_BAD_RESPONSE;
					f->counts = true;
					f->message = psprintf("%s answered with text that is not valid UTF-8",
										  p->name);
				}
				else if (provider_parse_response(p->kind,
												 pg_any_to_server(req->response,
																  req->response_len,
																  PG_UTF8),
												 out, &problem))
					return true;
				else
				{
					f->error_class = "bad_response";
					f->sqlstate = ERRCODE_MAESTER_BAD_RESPONSE;
					f->counts = true;
					f->message = psprintf("%s: %s", p->name, problem);
				}
			}
			else
			{
				classify_status(req->status, f);
				f->http_status = (int) req->status;
				f->retry_after_ms = req->retry_after_ms;
				if (strcmp(f->error_class, "redirect") == 0)
					f->message = psprintf("%s answered HTTP %ld, a redirect, which is not followed",
										  p->name, req->status);
				else
					f->message = psprintf("%s answered HTTP %ld: %s", p->name, req->status,
										  provider_error_summary(req->response,
																 req->response_len, key));
			}
			break;
		case HTTP_TIMEOUT:
			f->error_class = "timeout";
			f->sqlstate = ERRCODE_MAESTER_TIMEOUT;
			f->retryable = f->counts = true;
			f->message = psprintf("%s did not answer in time", p->name);
			break;
		case HTTP_CONNECT_FAILED:
		case HTTP_NETWORK_ERROR:
			f->error_class = req->outcome == HTTP_CONNECT_FAILED ? "connection" : "network";
			f->sqlstate = ERRCODE_MAESTER_UNREACHABLE;
			f->retryable = f->counts = true;
			f->message = psprintf("%s: %s", p->name, req->error);
			break;
		case HTTP_TOO_LARGE:
			f->error_class = "too_large";
			f->sqlstate = ERRCODE_MAESTER_BAD_RESPONSE;
			f->message = psprintf("%s: %s", p->name, req->error);
			break;
		case HTTP_EGRESS_DENIED:
			/* nothing left: the connection was refused before it opened */
			f->error_class = "egress_denied";
			f->sqlstate = ERRCODE_INSUFFICIENT_PRIVILEGE;
			f->fatal = true;
			f->message = psprintf("egress to provider \"%s\" refused", p->name);
			f->detail = psprintf("Its host resolved to %s, a private or loopback address.",
								 req->egress_reason);
			f->hint = "A superuser can allow a local server by listing its host in maester.allow_insecure_hosts.";
			break;
		case HTTP_INTERNAL_ERROR:
			f->error_class = "internal";
			f->sqlstate = ERRCODE_MAESTER_UNREACHABLE;
			f->message = psprintf("%s: %s", p->name, req->error);
			break;
	}
	return false;
}

/* maester.capture_content: keep prompts, variables and outputs for replay */
bool		maester_capture_content = false;

/*
 * With maester.capture_content on, keep what replay needs in
 * maester.capture, in the caller's transaction.
 */
static void
capture_call(Generation *g, text *content, text *system, Jsonb *vars,
			 Jsonb *options, int max_tokens)
{
	Datum		v[14];
	char		n[14];
	Oid			t[14] = {UUIDOID, TEXTOID, TEXTOID, TEXTOID, JSONBOID, TEXTOID, TEXTOID,
	TEXTOID, TEXTOID, TEXTOID, INT4OID, JSONBOID, TEXTOID, FLOAT8OID};
	JsonbValue *sc = g->evaluation ? json_get(&g->evaluation->root, "reliability_score") : NULL;

	memset(n, ' ', sizeof(n));
	v[0] = UUIDPGetDatum(&g->request_id);
	v[1] = CStringGetTextDatum(maester_tenant);
	v[2] = g->prompt_name ? CStringGetTextDatum(g->prompt_name) : (Datum) 0;
	n[2] = g->prompt_name ? ' ' : 'n';
	v[3] = g->prompt_version ? CStringGetTextDatum(g->prompt_version) : (Datum) 0;
	n[3] = g->prompt_version ? ' ' : 'n';
	v[4] = vars ? JsonbPGetDatum(vars) : (Datum) 0;
	n[4] = vars ? ' ' : 'n';
	v[5] = PointerGetDatum(content);
	v[6] = system ? PointerGetDatum(system) : (Datum) 0;
	n[6] = system ? ' ' : 'n';
	v[7] = g->requested_model ? CStringGetTextDatum(g->requested_model) : (Datum) 0;
	n[7] = g->requested_model ? ' ' : 'n';
	v[8] = CStringGetTextDatum(g->model);
	v[9] = CStringGetTextDatum(g->provider);
	v[10] = Int32GetDatum(max_tokens);
	n[10] = max_tokens > 0 ? ' ' : 'n';
	v[11] = options ? JsonbPGetDatum(options) : (Datum) 0;
	n[11] = options ? ' ' : 'n';
	v[12] = CStringGetTextDatum(g->resp.content);
	v[13] = sc && sc->type == jbvNumeric ?
		DirectFunctionCall1(numeric_float8, NumericGetDatum(sc->val.numeric)) : (Datum) 0;
	n[13] = sc && sc->type == jbvNumeric ? ' ' : 'n';
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("INSERT INTO maester.capture (request_id, tenant, prompt_name, "
							  "prompt_version, variables, prompt, system, requested_model, model, "
							  "provider, max_tokens, options, output, eval_score) "
							  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
							  14, t, v, n, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not capture the call");
	SPI_finish();
}

/* generation, or evaluation while an llm_rubric grader runs */
const char *maester_call_purpose = "generation";

/* Estimated output tokens when the caller gives no max_tokens */
#define ESTIMATE_DEFAULT_MAX_TOKENS 4096

/*
 * Attempts whose PENDING row is queued and whose SETTLE row is not yet:
 * one per call of a batch that is waiting for the ledger or on the wire.
 * Kept in TopMemoryContext so that the exit callback can settle them.
 */
typedef struct InFlight
{
	dlist_node	node;
	LedgerSlot *slot;
	BudgetHold	hold;
	bool		sent;			/* the request may have left */
	LedgerRecord rec;
} InFlight;

static dlist_head InFlightAttempts = DLIST_STATIC_INIT(InFlightAttempts);
static bool ExitCallbackRegistered = false;

static void ledger_backend_exit(int code, Datum arg);

/* Register an attempt whose PENDING row `r` was just queued */
static InFlight *
inflight_add(LedgerSlot *slot, LedgerRecord *r, BudgetHold *hold)
{
	InFlight   *f = MemoryContextAlloc(TopMemoryContext, sizeof(InFlight));

	f->slot = slot;
	f->hold = *hold;
	f->sent = false;
	memcpy(&f->rec, r, sizeof(LedgerRecord));
	dlist_push_tail(&InFlightAttempts, &f->node);
	return f;
}

/* Its SETTLE row is queued: forget it */
static void
inflight_done(InFlight *f)
{
	dlist_delete(&f->node);
	pfree(f);
}

/*
 * Settle an attempt that will not finish (an error, a cancel, the end of
 * the backend) as cancelled: charged at its estimate if the request may
 * have left, else at zero; its budget reservation is settled the same way.
 * Does not wait and does not throw (a full queue loses the row; the
 * worker's recovery then settles the PENDING row as an orphan).
 */
static void
inflight_cancel(InFlight *f, const char *error_class)
{
	LedgerRecord *r = &f->rec;

	r->kind = LEDGER_SETTLE;
	strlcpy(r->status, "cancelled", sizeof(r->status));
	strlcpy(r->error_class, error_class, sizeof(r->error_class));
	if (f->sent)
		r->cost[0] = '\0';		/* keep the estimate */
	else
		strlcpy(r->cost, "0", sizeof(r->cost));
	r->settled_at = GetCurrentTimestamp();
	(void) ledger_try_enqueue(f->slot, r);
	if (f->sent)
		budget_settle_at_estimate(&f->hold);
	else
		budget_settle(&f->hold, NULL);
	inflight_done(f);
}

/*
 * Backend exit (pg_terminate_backend during a call, which does not unwind
 * through PG_CATCH): settle every in-flight attempt as cancelled.
 */
static void
ledger_backend_exit(int code, Datum arg)
{
	dlist_mutable_iter it;

	dlist_foreach_modify(it, &InFlightAttempts)
		inflight_cancel(dlist_container(InFlight, node, it.cur), "terminated");
}

/* The host of a base URL, for the server.address attribute */
static char *
server_address(const char *url)
{
	const char *p = strstr(url, "://");
	const char *end;

	p = p ? p + 3 : url;
	end = p + strcspn(p, ":/?#");
	return pnstrdup(p, end - p);
}

/* Numeric as text into a ledger field ("" for NULL) */
static void
numeric_to_field(Numeric n, char *dst, size_t size)
{
	char	   *s;

	if (n == NULL)
	{
		dst[0] = '\0';
		return;
	}
	s = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(n)));
	if (strlen(s) >= size)
		elog(ERROR, "cost \"%s\" too long for the ledger", s);
	strlcpy(dst, s, size);
}

/* Fill the PENDING record of an attempt; returns the estimate (or NULL) */
static Numeric
fill_pending(LedgerRecord *r, RouteTarget *t, Generation *g, CallState *cs,
			 int max_tokens)
{
	Numeric		estimate;
	bool		priced;

	memset(r, 0, sizeof(*r));
	r->kind = LEDGER_PENDING;
	r->request_id = g->request_id;
	r->attempt = g->attempts;
	r->ts = GetCurrentTimestamp();
	ledger_copy_name(r->tenant, maester_tenant, sizeof(r->tenant));
	ledger_copy_name(r->role, GetUserNameFromId(GetUserId(), false), sizeof(r->role));
	strlcpy(r->trace_id, g->trace_id, sizeof(r->trace_id));
	strlcpy(r->prompt_hash, g->prompt_hash, sizeof(r->prompt_hash));
	ledger_copy_name(r->prompt_name, g->prompt_name, sizeof(r->prompt_name));
	ledger_copy_name(r->prompt_version, g->prompt_version, sizeof(r->prompt_version));
	ledger_copy_name(r->provider, t->provider->name, sizeof(r->provider));
	ledger_copy_name(r->requested_model, g->requested_model, sizeof(r->requested_model));
	ledger_copy_name(r->model, t->model, sizeof(r->model));
	strlcpy(r->status, "pending", sizeof(r->status));
	strlcpy(r->purpose, maester_call_purpose, sizeof(r->purpose));
	if (g->tags)
		strlcpy(r->tags, g->tags, sizeof(r->tags));
	r->max_tokens = max_tokens > 0 ? max_tokens : ESTIMATE_DEFAULT_MAX_TOKENS;
	estimate = maester_cost(t->model, cs->est_input_tokens, r->max_tokens, 0, 0,
							r->ts, &priced);
	numeric_to_field(estimate, r->estimate, sizeof(r->estimate));
	r->priced = priced;
	return estimate;
}

/* What a budget's on_block callback needs */
typedef struct BlockArg
{
	CallState  *cs;
	LedgerRecord *r;
} BlockArg;

/* What evaluate_fn needs, and what it makes */
typedef struct EvalArg
{
	Generation *g;
	Jsonb	   *ctx;
	Jsonb	   *result;
} EvalArg;

static void
evaluate_fn(void *arg)
{
	EvalArg    *ea = (EvalArg *) arg;

	ea->result = maester_evaluate(ea->g->resp.content, strlen(ea->g->resp.content),
								  ea->g->checks, ea->ctx);
}

/*
 * Evaluate a successful generation with the prompt version's checks (else
 * the articles' default), with its cost and latency as context.  A check
 * that errors (a bad regex, a failing grader) must not lose the generation,
 * so registered checks run in a subtransaction and an error becomes
 * {"status": "error", ...} with a WARNING; cancel and termination go on.
 */
static Jsonb *
evaluate_generation(Generation *g, double latency_ms)
{
	EvalArg		ea;
	ErrorData  *edata;
	StringInfoData j;

	ea.g = g;
	ea.result = NULL;
	ea.ctx = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(
		g->cost ? psprintf("{\"latency_ms\": %.3f, \"cost_usd\": %s}", latency_ms,
						   DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(g->cost))))
		: psprintf("{\"latency_ms\": %.3f}", latency_ms))));
	if (g->checks == NULL)
		return maester_evaluate(g->resp.content, strlen(g->resp.content), NULL, ea.ctx);

	edata = maester_subxact(evaluate_fn, &ea, CurrentMemoryContext);
	if (edata == NULL)
		return ea.result;
	if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
		edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
		ReThrowError(edata);
	ereport(WARNING,
			(errmsg("evaluation of the output failed: %s", edata->message),
			 errhint("Check the checks registered with prompt \"%s\".",
					 g->prompt_name ? g->prompt_name : "")));
	initStringInfo(&j);
	appendStringInfoString(&j, "{\"status\": \"error\", \"reliability_score\": 0, \"metrics\": [], \"error\": ");
	escape_json(&j, edata->message);
	appendStringInfoChar(&j, '}');
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(j.data)));
}

/* A blocked call leaves a durable 'blocked' row (nothing was sent) */
static void
write_blocked_row(void *arg)
{
	BlockArg   *ba = (BlockArg *) arg;
	LedgerRecord *r = ba->r;
	uint64		seq;

	strlcpy(r->status, "blocked", sizeof(r->status));
	strlcpy(r->error_class, "budget", sizeof(r->error_class));
	strlcpy(r->cost, "0", sizeof(r->cost));
	seq = ledger_enqueue(ba->cs->slot, r);
	(void) ledger_wait_durable(ba->cs->slot, seq, false);
}

/*
 * Fill the SETTLE record of an attempt that returned (ok or not): tokens,
 * exact cost, evaluation, error class; and its spans and statistics.
 */
static void
settle_attempt(RouteTarget *t, const GenRequest *gen, CallState *cs, Generation *g,
			   Failure *f, LedgerRecord *r, bool ok, TimestampTz start,
			   Numeric estimate, Span *gen_span)
{
	Span	   *span;

	g->last_provider = t->provider->name;
	g->last_model = t->model;
	r->kind = LEDGER_SETTLE;
	r->settled_at = GetCurrentTimestamp();
	r->latency_ms = (double) (r->settled_at - start) / 1000.0;
	if (ok)
	{
		if (!g->resp.usage_present)
		{
			/* no usage from the provider: estimate it, and say so */
			g->resp.input_tokens = estimate_tokens(gen->prompt) +
				estimate_tokens(gen->system);
			g->resp.output_tokens = estimate_tokens(g->resp.content);
			g->resp.cached_input_tokens = g->resp.cache_write_tokens = 0;
		}
		trace_attr_num(gen_span, "http.response.status_code", 200);
		trace_attr_str(gen_span, "gen_ai.response.model", g->resp.served_model);
		trace_attr_str(gen_span, "gen_ai.response.id", g->resp.response_id);
		trace_attr_num(gen_span, "gen_ai.usage.input_tokens", g->resp.input_tokens);
		trace_attr_num(gen_span, "gen_ai.usage.output_tokens", g->resp.output_tokens);
		if (g->resp.finish_reason)
		{
			StringInfoData fr;

			initStringInfo(&fr);
			appendStringInfoChar(&fr, '[');
			escape_json(&fr, g->resp.finish_reason);
			appendStringInfoChar(&fr, ']');
			trace_attr_raw(gen_span, "gen_ai.response.finish_reasons", fr.data);
		}
		span = trace_span_start(g->trace, "cost_metering");
		g->cost = maester_cost(g->resp.served_model ? g->resp.served_model : t->model,
							   g->resp.input_tokens, g->resp.output_tokens,
							   g->resp.cached_input_tokens, g->resp.cache_write_tokens,
							   r->ts, &g->priced);
		if (g->cost)
			trace_attr_raw(span, "maester.cost_usd",
						   DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(g->cost))));
		trace_span_end(span, g->priced ? "ok" : "unpriced");
		strlcpy(r->status, "ok", sizeof(r->status));
		if (g->resp.served_model)
			ledger_copy_name(r->model, g->resp.served_model, sizeof(r->model));
		r->has_usage = true;
		r->usage_estimated = !g->resp.usage_present;
		r->input_tokens = g->resp.input_tokens;
		r->output_tokens = g->resp.output_tokens;
		r->cached_input_tokens = g->resp.cached_input_tokens;
		r->cache_write_tokens = g->resp.cache_write_tokens;
		r->priced = g->priced;
		r->fallback_used = g->fallback_used;
		r->http_status = 200;
		numeric_to_field(g->cost, r->cost, sizeof(r->cost));

		/* every output is evaluated; the ledger row carries the verdict */
		span = trace_span_start(g->trace, "evaluation");
		g->evaluation = evaluate_generation(g, r->latency_ms);
		{
			char	   *st = json_get_string(&g->evaluation->root, "status");
			JsonbValue *sc = json_get(&g->evaluation->root, "reliability_score");

			strlcpy(r->eval_status, st ? st : "error", sizeof(r->eval_status));
			r->eval_score = sc && sc->type == jbvNumeric ?
				DatumGetFloat8(DirectFunctionCall1(numeric_float8, NumericGetDatum(sc->val.numeric))) : 0;
			trace_attr_str(span, "maester.evaluation.status", r->eval_status);
			trace_attr_num(span, "maester.evaluation.score", r->eval_score);
			trace_span_end(span, strcmp(r->eval_status, "error") == 0 ? "error" : "ok");
		}
	}
	else
	{
		/* a timeout may have been billed: keep the estimate; else nothing */
		bool		maybe_billed = strcmp(f->error_class, "timeout") == 0 ||
			strcmp(f->error_class, "network") == 0;

		strlcpy(r->status, strcmp(f->error_class, "timeout") == 0 ? "timeout" : "error",
				sizeof(r->status));
		strlcpy(r->error_class, f->error_class, sizeof(r->error_class));
		if (!maybe_billed)
			strlcpy(r->cost, "0", sizeof(r->cost));
		r->http_status = f->http_status;
		trace_attr_str(gen_span, "error.type", f->error_class);
		if (f->http_status)
			trace_attr_num(gen_span, "http.response.status_code", f->http_status);
		if (f->retryable)
			trace_attr_str(gen_span, "maester.retry_reason", f->error_class);
	}
	stat_attempt(t->provider->name, ok && g->resp.served_model ? g->resp.served_model : t->model,
				 ok ? NULL : f->error_class,
				 ok ? g->resp.input_tokens : 0, ok ? g->resp.output_tokens : 0,
				 ok ? g->cost : NULL);
}

/* Backoff before retry `attempt_no` (1-based) of provider `p` */
static double
backoff_ms(ProviderConf *p, int attempt_no)
{
	double		d = (double) p->backoff_base_ms * pow(2.0, attempt_no - 1);

	d = Min(d, (double) p->backoff_max_ms);
	/* equal jitter: half fixed, half random */
	return d / 2 + pg_prng_double(&pg_global_prng_state) * d / 2;
}

/* Note a failure (or a skipped target) */
static void
note_failure(CallState *cs, const char *provider, const Failure *f)
{
	appendStringInfo(&cs->log, "%s%s: %s", cs->log.len ? "; " : "", provider,
					 f->error_class);
	cs->last = *f;
}

/* Estimate tokens of a text: about four characters a token */
static int64
estimate_tokens(const char *s)
{
	return s ? (pg_mbstrlen(s) + 3) / 4 : 0;
}

/*
 * The call machine.
 *
 * A call -- one llm_generate, or one request of generate_batch -- moves
 * through phases; the driver (run_calls) keeps up to `concurrency` calls
 * going at once on the backend's one curl multi handle, and sleeps on
 * curl's sockets and the latch (which the ledger worker sets when a row is
 * durable) until some call can move again:
 *
 *	 TARGET   choose the next target: skip disabled providers and providers
 *			  whose key is not set;
 *	 ATTEMPT  the deadline, the provider's max_connections (in this backend),
 *			  its rate limit (-> PACED until its turn), the circuit breaker,
 *			  budgets (block, downgrade, or reserve the worst case); queue
 *			  the PENDING ledger row -> DURABLE;
 *	 DURABLE  once the ledger worker has made PENDING durable (else MG006
 *			  after maester.ledger_timeout_ms, nothing sent), build the
 *			  request with the key and start it -> SENT;
 *	 SENT	  when curl has finished it: classify, meter, evaluate, queue
 *			  the SETTLE row; then DONE, or BACKOFF before a retry, or the
 *			  next TARGET, or FAILED;
 *	 PACED, BACKOFF  wait until wake_at, then ATTEMPT.
 *
 * Every attempt is a ledger row and a span, exactly as for a single call.
 * Before run_calls returns, it waits (once) for the SETTLE rows it queued
 * to be durable.  When an error or a cancel escapes, every unfinished call
 * is torn down: its transfer is removed (curl closes the connection), its
 * in-flight attempt settled as cancelled (at its estimate if it may have
 * been sent), its budget reservation and circuit probe released, its spans
 * queued.  With `isolate` (generate_batch), an error raised while one call
 * moves (a bad request, a refused egress, a blocked budget) ends that call
 * only: each move runs in a subtransaction, and only cancel and shutdown
 * go through to the whole batch.
 */
typedef enum CallPhase
{
	PHASE_TARGET,
	PHASE_ATTEMPT,
	PHASE_PACED,
	PHASE_BACKOFF,
	PHASE_DURABLE,
	PHASE_SENT,
	PHASE_DONE,
	PHASE_FAILED
} CallPhase;

/* The arguments of one call, as llm_generate takes them */
typedef struct CallArgs
{
	text	   *prompt;
	char	   *model;
	int			max_tokens;		/* 0: none */
	text	   *system;
	char	   *prompt_name;
	Jsonb	   *variables;
	char	   *prompt_version;
	Jsonb	   *options;
} CallArgs;

struct Call
{
	int			ordinal;		/* 1-based position in the batch */
	MemoryContext cxt;			/* everything of this call */
	CallPhase	phase;
	CallArgs	args;
	CallOptions opts;
	Generation	g;
	RoutePlan  *plan;
	int			ntargets;
	int			ti;				/* current target */
	int			tries;			/* attempts on it so far */
	bool		paced;			/* this attempt has its rate-limit turn */
	TimestampTz paced_since;
	TimestampTz started;
	TimestampTz wake_at;		/* PACED, BACKOFF */
	CallState	cs;
	char	   *tenant;			/* maester.tenant when the call was prepared */
	text	   *content;		/* the prompt as sent, for capture */
	text	   *system;
	/* the attempt in progress */
	LedgerRecord *rec;
	Numeric		estimate;
	InFlight   *inflight;
	uint64		pending_seq;
	TimestampTz pending_at;
	bool		probe;			/* admitted as the circuit's half-open probe */
	char	   *key;
	HttpRequest req;
	bool		req_live;		/* req holds curl resources */
	Span	   *gen_span;
	TimestampTz attempt_start;
	bool		cancel_requested;	/* by its driver: end it as cancelled */
	bool		finished;		/* call_succeeded_finish has run */
	/* a failed call */
	int			sqlstate;
	const char *error_class;
	char	   *message;
	char	   *detail;
	const char *hint;
};

/* The calls run_calls is moving */
typedef struct CallSet
{
	Call	  **calls;
	int			ncalls;
	int			max;
	uint64		settle_seq;		/* highest SETTLE row queued */
	LedgerSlot *slot;
	CallDriver *driver;
	MemoryContext roundcxt;		/* reset at each round */
} CallSet;

/* Fail the call: with the last failure and the list of attempts */
static void
call_fail(Call *c)
{
	CallState  *cs = &c->cs;

	if (cs->last.error_class == NULL)
	{
		cs->last.error_class = "unavailable";
		cs->last.sqlstate = ERRCODE_MAESTER_UNAVAILABLE;
		cs->last.message = pstrdup("no target could be tried");
	}
	c->phase = PHASE_FAILED;
	c->error_class = cs->last.error_class;
	c->sqlstate = cs->last.sqlstate;
	if (cs->last.fatal)
	{
		c->message = cs->last.message;
		c->detail = cs->last.detail;
		c->hint = cs->last.hint;
		return;
	}
	c->message = psprintf("model call failed: %s", cs->last.message);
	c->detail = psprintf("Requested model: %s. Attempts: %s.",
						 c->plan && c->plan->requested ? c->plan->requested : "(default route)",
						 cs->log.len ? cs->log.data : "none");
}

/* Fail the call with a failure that is not an attempt's */
static void
call_fail_with(Call *c, const char *provider, const char *error_class,
			   int sqlstate, char *message)
{
	Failure		f;

	memset(&f, 0, sizeof(f));
	f.error_class = error_class;
	f.sqlstate = sqlstate;
	f.message = message;
	note_failure(&c->cs, provider, &f);
}

/* The key of the current target, or NULL with *missing set */
static char *
call_key(Call *c, char **missing)
{
	ProviderConf *p = c->plan->targets[c->ti].provider;

	*missing = NULL;
	return maester_provider_key(p->name, p->api_key_env, p->api_key_file, missing);
}

/* TARGET: the next target that can be tried, or FAILED */
static void
phase_target(Call *c)
{
	for (; c->ti < c->ntargets; c->ti++)
	{
		RouteTarget *t = &c->plan->targets[c->ti];
		char	   *missing;
		char	   *key;

		if (!t->provider->enabled)
		{
			call_fail_with(c, t->provider->name, "disabled", ERRCODE_MAESTER_UNAVAILABLE,
						   psprintf("provider \"%s\" is disabled", t->provider->name));
			continue;
		}
		key = call_key(c, &missing);
		if (missing)
		{
			call_fail_with(c, t->provider->name, "no_api_key",
						   ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
						   psprintf("API key of provider \"%s\" is not set: %s",
									t->provider->name, missing));
			continue;
		}
		maester_forget_key(key);
		c->tries = 0;
		c->paced = false;
		c->phase = PHASE_ATTEMPT;
		return;
	}
	call_fail(c);
}

/* Move on after a failure that ends the current target */
static void
next_target(Call *c)
{
	c->ti++;
	c->paced = false;
	if (GetCurrentTimestamp() >= c->cs.deadline)
		call_fail(c);
	else
		c->phase = PHASE_TARGET;
}

/* Requests this backend has in flight to a provider */
static int
connections_to(CallSet *set, const char *provider)
{
	int			n = 0;

	for (int i = 0; i < set->ncalls; i++)
	{
		Call	   *o = set->calls[i];

		if ((o->phase == PHASE_DURABLE || o->phase == PHASE_SENT) &&
			strcmp(o->plan->targets[o->ti].provider->name, provider) == 0)
			n++;
	}
	return n;
}

/*
 * Queue an attempt's PENDING row.  When that fails (the ledger's queue
 * stayed full, or a cancel while waiting for room), nothing is in flight:
 * the budget reservation is handed back before the error goes on.
 */
pg_noinline static uint64
enqueue_pending(LedgerSlot *slot, LedgerRecord *r, BudgetHold *hold)
{
	volatile uint64 seq = 0;

	PG_TRY();
	{
		seq = ledger_enqueue(slot, r);
	}
	PG_CATCH();
	{
		HOLD_INTERRUPTS();
		budget_settle(hold, NULL);
		RESUME_INTERRUPTS();
		PG_RE_THROW();
	}
	PG_END_TRY();
	return seq;
}

/* ATTEMPT: admit an attempt and queue its PENDING row */
static void
phase_attempt(Call *c, CallSet *set)
{
	RouteTarget *t = &c->plan->targets[c->ti];
	ProviderConf *p = t->provider;
	CallState  *cs = &c->cs;
	TimestampTz now = GetCurrentTimestamp();
	CircuitAdmit admit;
	BudgetHold	hold;
	BudgetVerdict verdict;
	BlockArg	ba;
	char	   *downgrade = NULL;
	Span	   *span;
	bool		allow_private;
	LedgerRecord *r;

	if (now >= cs->deadline)
	{
		call_fail_with(c, p->name, "timeout", ERRCODE_MAESTER_TIMEOUT,
					   psprintf("the call's deadline of %d ms passed", c->opts.timeout_ms));
		call_fail(c);
		return;
	}

	/*
	 * The provider's rate limit: wait for our turn.  The wait does not
	 * count against the deadline, but may not be longer than it: a turn
	 * further away is not taken, and the target fails as rate_limited.
	 */
	if (!c->paced)
	{
		int			max_tokens = c->opts.gen.max_tokens > 0 ?
			c->opts.gen.max_tokens : ESTIMATE_DEFAULT_MAX_TOKENS;
		TimestampTz turn;

		if (!rate_reserve(p, estimate_tokens(c->opts.gen.prompt) +
						  estimate_tokens(c->opts.gen.system) + max_tokens,
						  (int64) c->opts.timeout_ms * 1000, &turn))
		{
			call_fail_with(c, p->name, "rate_limited", ERRCODE_MAESTER_UNAVAILABLE,
						   psprintf("provider \"%s\"'s rate limit would delay the call by more than its timeout of %d ms",
									p->name, c->opts.timeout_ms));
			next_target(c);
			return;
		}
		c->paced = true;
		if (turn > now)
		{
			c->wake_at = turn;
			c->paced_since = now;
			c->phase = PHASE_PACED;
			return;
		}
	}

	admit = circuit_admit(p);
	if (admit == CIRCUIT_SKIP)
	{
		call_fail_with(c, p->name, "circuit_open", ERRCODE_MAESTER_UNAVAILABLE,
					   psprintf("provider \"%s\" is failing: its circuit breaker is open", p->name));
		next_target(c);
		return;
	}
	c->probe = admit == CIRCUIT_ADMIT_PROBE;

	/* refuse a URL our egress policy forbids before anything is queued */
	http_check_url(provider_url(p->kind, p->base_url), &allow_private);

	c->opts.gen.model = t->model;
	c->tries++;
	c->g.attempts++;
	c->g.fallback_used = c->ti > 0 || cs->downgraded;

	r = palloc(sizeof(LedgerRecord));
	c->attempt_start = 0;
	c->estimate = fill_pending(r, t, &c->g, cs, c->opts.gen.max_tokens);

	/* budgets: reserve the worst case, or block (MB001), or downgrade */
	ba.cs = cs;
	ba.r = r;
	span = trace_span_start(c->g.trace, "budget_check");
	if (c->estimate)
		trace_attr_raw(span, "maester.estimated_cost_usd",
					   DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(c->estimate))));
	verdict = budget_reserve(r->tenant, c->g.prompt_name, t->model, c->estimate, &hold,
							 &downgrade, write_blocked_row, &ba);
	trace_span_end(span, NULL);
	if (verdict == BUDGET_DOWNGRADE)
	{
		trace_attr_str(span, "maester.budget.downgrade_to", downgrade);
		pfree(r);
		if (c->probe)
			circuit_release_probe(p);
		c->probe = false;
		if (cs->downgraded)
		{
			Failure		f;

			memset(&f, 0, sizeof(f));
			f.error_class = "budget";
			f.sqlstate = MAKE_SQLSTATE('M', 'B', '0', '0', '1');
			f.fatal = true;
			f.message = psprintf("a budget is still exceeded after downgrading the call to \"%s\"",
								 c->plan->requested ? c->plan->requested : "(default route)");
			f.detail = "Nothing was sent.";
			cs->last = f;
			call_fail(c);
			return;
		}
		/* a budget asked for a cheaper model: start over with its plan, once */
		appendStringInfo(&cs->log, "%sbudget: downgrade to %s",
						 cs->log.len ? "; " : "", downgrade);
		c->plan = router_plan(downgrade);
		c->ntargets = c->opts.fallback ? c->plan->ntargets : Min(c->plan->ntargets, 1);
		cs->downgraded = true;
		c->g.fallback_used = true;
		c->ti = 0;
		c->paced = false;
		c->phase = PHASE_TARGET;
		return;
	}

	/*
	 * A budget reserved max_tokens output tokens (4,096 when the caller gave
	 * none): ask the provider for no more, so the reservation bounds the cost.
	 */
	if (hold.n > 0 && c->opts.gen.max_tokens <= 0)
		c->opts.gen.max_tokens = r->max_tokens;

	/* from the PENDING row on, the attempt is in flight */
	c->pending_seq = enqueue_pending(cs->slot, r, &hold);
	c->inflight = inflight_add(cs->slot, r, &hold);
	c->rec = r;
	c->pending_at = GetCurrentTimestamp();
	c->phase = PHASE_DURABLE;
	(void) set;
}

static void attempt_end(Call *c, CallSet *set, bool ok, Failure *f, bool sent);

/* DURABLE: PENDING is durable; send */
static void
phase_send(Call *c, CallSet *set)
{
	RouteTarget *t = &c->plan->targets[c->ti];
	ProviderConf *p = t->provider;
	GenRequest *gen = &c->opts.gen;
	Span	   *span;
	char	   *missing;
	long		remaining = (long) ((c->cs.deadline - GetCurrentTimestamp()) / 1000);

	span = trace_span_start(c->g.trace, "model_generate");
	c->gen_span = span;
	trace_attr_str(span, "gen_ai.operation.name", "chat");
	trace_attr_str(span, "gen_ai.provider.name", p->name);
	trace_attr_str(span, "gen_ai.request.model", t->model);
	trace_attr_str(span, "server.address", server_address(p->base_url));
	trace_attr_num(span, "maester.attempt", c->g.attempts);
	if (gen->max_tokens > 0)
		trace_attr_num(span, "gen_ai.request.max_tokens", gen->max_tokens);
	if (gen->has_temperature)
		trace_attr_num(span, "gen_ai.request.temperature", gen->temperature);
	c->g.traceparent = trace_traceparent_header(c->g.trace, span);

	if (remaining <= 0)
	{
		/* the deadline passed while PENDING was made durable: nothing leaves */
		Failure		f;

		memset(&f, 0, sizeof(f));
		f.error_class = "timeout";
		f.sqlstate = ERRCODE_MAESTER_TIMEOUT;
		f.retry_after_ms = -1;
		f.message = psprintf("the call's deadline of %d ms passed before the request was sent",
							 c->opts.timeout_ms);
		trace_span_end(span, "error");
		attempt_end(c, set, false, &f, false);
		return;
	}

	c->key = call_key(c, &missing);
	if (missing)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("API key of provider \"%s\" is not set: %s", p->name, missing)));
	c->req_live = true;
	attempt_build(t, gen, c->key, &c->g.request_id, c->g.traceparent,
				  Max(Min((long) p->timeout_ms, remaining), 1L), &c->req);
	c->attempt_start = GetCurrentTimestamp();
	http_submit(&c->req);
	/* from here on the request may have left (and may be billed) */
	c->inflight->sent = true;
	c->phase = PHASE_SENT;
}

/* Wipe the key and free the request of the attempt */
static void
release_request(Call *c)
{
	if (c->req_live)
	{
		http_abort(&c->req);
		free_headers(&c->req);
		http_request_cleanup(&c->req);
		c->req_live = false;
	}
	if (c->key)
	{
		maester_forget_key(c->key);
		c->key = NULL;
	}
}

/* SENT: the transfer finished; settle the attempt and decide what next */
static void
phase_settle(Call *c, CallSet *set)
{
	RouteTarget *t = &c->plan->targets[c->ti];
	Failure		f;
	bool		ok;

	ok = attempt_result(t, &c->req, c->key, &c->g.resp, &f);
	release_request(c);
	trace_span_end(c->gen_span, ok ? "ok" : "error");
	attempt_end(c, set, ok, &f, true);
}

/*
 * An attempt ended (answered, failed, or never sent): its SETTLE row, its
 * budget settlement, the circuit breaker; then what the call does next.
 */
static void
attempt_end(Call *c, CallSet *set, bool ok, Failure *fp, bool sent)
{
	RouteTarget *t = &c->plan->targets[c->ti];
	ProviderConf *p = t->provider;
	CallState  *cs = &c->cs;
	LedgerRecord *r = c->rec;
	BudgetHold	hold = c->inflight->hold;
	Failure		f = *fp;
	int			max_tries;
	double		wait;

	if (c->attempt_start == 0)
		c->attempt_start = GetCurrentTimestamp();
	settle_attempt(t, &c->opts.gen, cs, &c->g, &f, r, ok, c->attempt_start,
				   c->estimate, c->gen_span);
	if (!sent)
		strlcpy(r->cost, "0", sizeof(r->cost));

	/* queued: no longer in flight */
	{
		uint64		seq = ledger_enqueue(cs->slot, r);

		set->settle_seq = Max(set->settle_seq, seq);
	}
	inflight_done(c->inflight);
	c->inflight = NULL;
	c->gen_span = NULL;
	c->rec = NULL;
	if (ok)
		budget_settle(&hold, c->g.cost ? c->g.cost : c->estimate);
	else if (r->cost[0] == '\0')
		budget_settle_at_estimate(&hold);
	else
		budget_settle(&hold, NULL);
	pfree(r);

	if (ok)
	{
		c->probe = false;
		circuit_record(p, true, false);
		c->g.provider = p->name;
		c->g.model = c->g.resp.served_model ? c->g.resp.served_model : t->model;
		c->phase = PHASE_DONE;
		return;
	}
	if (sent)
		circuit_record(p, false, f.counts);
	else if (c->probe)
		circuit_release_probe(p);	/* the provider said nothing: no verdict */
	c->probe = false;
	note_failure(cs, p->name, &f);
	if (f.fatal)
	{
		call_fail(c);
		return;
	}
	max_tries = c->opts.max_attempts > 0 ? c->opts.max_attempts : Max(p->max_attempts, 1);
	if (!f.retryable || c->tries >= max_tries)
	{
		next_target(c);
		return;
	}

	/* wait before the next attempt, within the deadline */
	if (f.retry_after_ms >= 0)
	{
		if (f.retry_after_ms > maester_retry_after_max_ms)
		{
			next_target(c);		/* too long: fall back instead */
			return;
		}
		wait = f.retry_after_ms;
	}
	else
		wait = backoff_ms(p, c->tries);
	if (GetCurrentTimestamp() + (TimestampTz) (wait * 1000) >= cs->deadline)
	{
		cs->last.error_class = "timeout";
		cs->last.sqlstate = ERRCODE_MAESTER_TIMEOUT;
		cs->last.message = psprintf("%s; no time left for a retry within the call's deadline of %d ms",
									f.message, c->opts.timeout_ms);
		call_fail(c);
		return;
	}
	c->wake_at = GetCurrentTimestamp() + (TimestampTz) (wait * 1000);
	c->paced = false;
	c->phase = PHASE_BACKOFF;
}

/*
 * Can the call move now?  Cheap: no subtransaction is started for a call
 * that would only find it must wait.  `durable` is the ledger's durable
 * sequence number, read once per round.
 */
static bool
call_ready(Call *c, CallSet *set, uint64 durable, TimestampTz now)
{
	switch (c->phase)
	{
		case PHASE_TARGET:
			return true;
		case PHASE_ATTEMPT:
			{
				ProviderConf *p = c->plan->targets[c->ti].provider;

				return p->max_connections <= 0 ||
					connections_to(set, p->name) < p->max_connections;
			}
		case PHASE_PACED:
		case PHASE_BACKOFF:
			return now >= c->wake_at;
		case PHASE_DURABLE:
			return durable >= c->pending_seq ||
				TimestampDifferenceExceeds(c->pending_at, now, maester_ledger_timeout_ms);
		case PHASE_SENT:
			return c->req.done;
		case PHASE_DONE:
		case PHASE_FAILED:
			return false;
	}
	return false;
}

/* Move the call as far as it can go without waiting */
static void
call_move(Call *c, CallSet *set)
{
	MemoryContext old = MemoryContextSwitchTo(c->cxt);

	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();

		switch (c->phase)
		{
			case PHASE_TARGET:
				phase_target(c);
				continue;
			case PHASE_ATTEMPT:
				{
					ProviderConf *p = c->plan->targets[c->ti].provider;

					if (p->max_connections > 0 &&
						connections_to(set, p->name) >= p->max_connections)
						break;
					phase_attempt(c, set);
					continue;
				}
			case PHASE_PACED:
				if (now < c->wake_at)
					break;
				/* rate-limit waiting does not count against the deadline */
				c->cs.deadline += c->wake_at - c->paced_since;
				c->phase = PHASE_ATTEMPT;
				continue;
			case PHASE_BACKOFF:
				if (now < c->wake_at)
					break;
				c->phase = PHASE_ATTEMPT;
				continue;
			case PHASE_DURABLE:
				if (ledger_durable_seq(c->cs.slot) >= c->pending_seq)
				{
					phase_send(c, set);
					continue;
				}
				if (TimestampDifferenceExceeds(c->pending_at, now, maester_ledger_timeout_ms))
					ereport(ERROR,
							(errcode(MAKE_SQLSTATE('M', 'G', '0', '0', '6')),
							 errmsg("the usage ledger did not confirm the call within %d ms",
									maester_ledger_timeout_ms),
							 errdetail("Nothing was sent to the provider.")));
				break;
			case PHASE_SENT:
				if (!c->req.done)
					break;
				phase_settle(c, set);
				continue;
			case PHASE_DONE:
			case PHASE_FAILED:
				break;
		}
		break;
	}
	MemoryContextSwitchTo(old);
}

/* A failed call's spans and statistics */
static void
call_failed_finish(Call *c)
{
	if (c->g.trace)
		trace_flush_nothrow(c->g.trace, c->tenant, &c->g.request_id);
	if (c->g.last_provider)
		stat_call(c->g.last_provider, c->g.last_model, true, c->g.attempts,
				  c->g.fallback_used, elapsed_ms(c->started));
}

/*
 * Tear down a call that will not finish normally (an error in one of its
 * moves, or the whole batch's): its transfer, its key, its in-flight
 * attempt, its circuit probe; its spans are queued.  Runs with interrupts
 * held; does not throw short of running out of memory.
 */
static void
call_abort(Call *c)
{
	release_request(c);
	if (c->inflight)
	{
		inflight_cancel(c->inflight, "cancelled");
		c->inflight = NULL;
	}
	if (c->probe && c->plan)
		circuit_release_probe(c->plan->targets[c->ti].provider);
	c->probe = false;
	if (c->gen_span && c->gen_span->duration_us < 0)
		c->gen_span->status = "cancelled";
	c->gen_span = NULL;
	call_failed_finish(c);
	c->g.last_provider = NULL;	/* counted once, whoever finishes it */
}


/*
 * call_move in a subtransaction (CALLS_SUBXACT) or a transaction of its
 * own (CALLS_XACT): an error ends this call only (FAILED, with the error's
 * SQLSTATE and message); cancel and shutdown go on.
 */
pg_noinline static void
call_move_isolated(Call *c, CallSet *set, CallIsolation isolation)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;

	if (isolation == CALLS_SUBXACT)
		BeginInternalSubTransaction(NULL);
	else
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
	}
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		if (set->driver->enter)
			set->driver->enter(c, set->driver->arg);
		call_move(c, set);
		if (isolation == CALLS_SUBXACT)
		{
			ReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(oldcxt);
			CurrentResourceOwner = oldowner;
		}
		else
		{
			PopActiveSnapshot();
			CommitTransactionCommand();
			MemoryContextSwitchTo(oldcxt);
		}
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		int			category;

		MemoryContextSwitchTo(c->cxt);
		edata = CopyErrorData();
		FlushErrorState();
		if (isolation == CALLS_SUBXACT)
		{
			RollbackAndReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(oldcxt);
			CurrentResourceOwner = oldowner;
		}
		else
		{
			AbortCurrentTransaction();
			MemoryContextSwitchTo(oldcxt);
		}
		/*
		 * A cancel or termination of the backend ends every call.  In a
		 * worker (CALLS_XACT) those codes may come from a user's code
		 * instead; only the worker's own shutdown request goes on.
		 */
		if (ShutdownRequestPending ||
			(isolation == CALLS_SUBXACT &&
			 (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			  edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)))
			ReThrowError(edata);
		HOLD_INTERRUPTS();
		call_abort(c);
		RESUME_INTERRUPTS();
		c->phase = PHASE_FAILED;
		c->sqlstate = edata->sqlerrcode;
		category = ERRCODE_TO_CATEGORY(edata->sqlerrcode);
		if (edata->sqlerrcode == MAKE_SQLSTATE('M', 'B', '0', '0', '1'))
			c->error_class = "budget";
		else if (edata->sqlerrcode == ERRCODE_INSUFFICIENT_PRIVILEGE)
			c->error_class = "egress_denied";
		else if (edata->sqlerrcode == MAKE_SQLSTATE('M', 'G', '0', '0', '6'))
			c->error_class = "ledger_unavailable";
		else if (category == ERRCODE_DATA_EXCEPTION ||
				 category == ERRCODE_SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION)
			c->error_class = "invalid_request";
		else
			c->error_class = "error";
		c->message = edata->message;
		c->detail = edata->detail;
		c->hint = edata->hint;
	}
	PG_END_TRY();
}

/* A call its driver asked to stop: torn down, FAILED as cancelled */
static void
call_cancel(Call *c)
{
	HOLD_INTERRUPTS();
	call_abort(c);
	RESUME_INTERRUPTS();
	c->phase = PHASE_FAILED;
	c->sqlstate = ERRCODE_QUERY_CANCELED;
	c->error_class = "cancelled";
	c->message = MemoryContextStrdup(c->cxt, "the call was cancelled");
	c->detail = NULL;
	c->hint = NULL;
}

/*
 * Run calls until every one is DONE or FAILED (persistent drivers: until
 * stop() says so), at most d->concurrency at a time, taking them from
 * d->next as room frees up and handing each finished call to d->done.
 * See the comment on the call machine above.
 */
void
run_calls(CallDriver *d)
{
	CallSet		set;

	memset(&set, 0, sizeof(set));
	set.max = d->concurrency;
	set.calls = palloc0(sizeof(Call *) * d->concurrency);
	set.driver = d;
	if (!ExitCallbackRegistered)
	{
		before_shmem_exit(ledger_backend_exit, (Datum) 0);
		ExitCallbackRegistered = true;
	}

	PG_TRY();
	{
		bool		exhausted = false;
		MemoryContext outer = CurrentMemoryContext;

		/*
		 * What a round allocates outside the calls' own contexts (wait
		 * event sets, span records, error paths) is freed with the round,
		 * so that a persistent driver does not grow.
		 */
		set.roundcxt = AllocSetContextCreate(outer, "maester call round",
											 ALLOCSET_DEFAULT_SIZES);
		for (;;)
		{
			uint64		durable = 0;
			TimestampTz now;
			long		wait = 1000;
			bool		finished = false;

			MemoryContextSwitchTo(outer);
			MemoryContextReset(set.roundcxt);
			MemoryContextSwitchTo(set.roundcxt);

			if (d->stop && d->stop(d->arg))
				ereport(ERROR,
						(errcode(ERRCODE_ADMIN_SHUTDOWN),
						 errmsg("maester worker stopping")));
			while ((!exhausted || d->persistent) && set.ncalls < set.max)
			{
				Call	   *c = d->next(d->arg);

				if (c == NULL)
				{
					exhausted = true;
					break;
				}
				set.calls[set.ncalls++] = c;
				if (set.slot == NULL && c->cs.slot != NULL)
					set.slot = c->cs.slot;
			}
			if (set.ncalls == 0 && !d->persistent)
				break;

			if (set.slot)
				durable = ledger_durable_seq(set.slot);
			now = GetCurrentTimestamp();
			for (int i = 0; i < set.ncalls; i++)
			{
				Call	   *c = set.calls[i];

				if (c->cancel_requested && c->phase != PHASE_DONE && c->phase != PHASE_FAILED)
					call_cancel(c);
				else if (call_ready(c, &set, durable, now))
				{
					if (d->isolation == CALLS_SHARED)
						call_move(c, &set);
					else
						call_move_isolated(c, &set, d->isolation);
				}
				if (c->phase == PHASE_DONE || c->phase == PHASE_FAILED)
				{
					if (c->phase == PHASE_FAILED)
					{
						if (d->enter)
							d->enter(c, d->arg);
						call_failed_finish(c);
					}
					set.calls[i] = set.calls[--set.ncalls];
					i--;
					d->done(c, d->arg);
					finished = true;
				}
			}
			if (finished)
				continue;		/* take more calls before sleeping */
			if (d->idle)
				d->idle(d->arg);

			/* sleep until the next timer, socket or latch (the ledger's) */
			now = GetCurrentTimestamp();
			if (set.slot)
				durable = ledger_durable_seq(set.slot);
			for (int i = 0; i < set.ncalls; i++)
			{
				Call	   *c = set.calls[i];

				if (c->phase == PHASE_PACED || c->phase == PHASE_BACKOFF)
					wait = Min(wait, (long) Max((c->wake_at - now + 999) / 1000, 0));
				else if (c->phase == PHASE_TARGET)
					wait = 0;
				else if (c->phase == PHASE_DURABLE)
					wait = durable >= c->pending_seq ? 0 : Min(wait, 100);
			}
			http_step(wait);
		}
		MemoryContextSwitchTo(outer);
		MemoryContextDelete(set.roundcxt);
	}
	PG_CATCH();
	{
		HOLD_INTERRUPTS();
		for (int i = 0; i < set.ncalls; i++)
			call_abort(set.calls[i]);
		RESUME_INTERRUPTS();
		PG_RE_THROW();
	}
	PG_END_TRY();

	/* every SETTLE row durable before the results are seen */
	if (set.settle_seq > 0 && set.slot)
		(void) ledger_wait_durable(set.slot, set.settle_seq, false);
}

/*
 * A call, prepared: its arguments checked, its prompt rendered (or
 * hashed), its route planned, its trace begun.  Raises 22023 for bad
 * arguments, and whatever rendering or routing raises.
 */
static Call *
call_prepare(CallArgs *a, int ordinal, MemoryContext cxt, const pg_uuid_t *request_id)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	Call	   *c = palloc0(sizeof(Call));
	Generation *g = &c->g;
	text	   *content;
	text	   *system = NULL;

	c->ordinal = ordinal;
	c->cxt = cxt;
	c->args = *a;
	c->started = GetCurrentTimestamp();
	c->tenant = pstrdup(maester_tenant);

	if ((a->prompt == NULL) == (a->prompt_name == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("give exactly one of prompt and prompt_name"),
				 errhint("Pass prompt => 'text' for a raw prompt, or prompt_name => 'name' to render one from the registry.")));
	if (a->prompt_name == NULL && (a->variables != NULL || a->prompt_version != NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("variables and prompt_version go with prompt_name")));
	if (a->max_tokens < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_tokens must be positive")));
	parse_options(a->options, &c->opts);

	new_ids(&g->request_id, g->trace_id);
	if (request_id)
		g->request_id = *request_id;
	g->trace = palloc(sizeof(CallTrace));
	trace_begin(g->trace);
	strlcpy(g->trace_id, g->trace->trace_id, sizeof(g->trace_id));
	g->tags = c->opts.tags;
	g->requested_model = a->model;

	/* the prompt */
	if (a->prompt_name != NULL)
	{
		RenderedPrompt rp;
		Span	   *span = trace_span_start(g->trace, "prompt_render");

		maester_render(a->prompt_name, a->prompt_version, a->variables, &rp);
		trace_attr_str(span, "gen_ai.prompt.name", rp.name);
		trace_attr_str(span, "maester.prompt.version", rp.version);
		trace_span_end(span, NULL);
		if (rp.system != NULL && a->system != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("prompt \"%s\" version \"%s\" has a system template; do not pass system",
							rp.name, rp.version)));
		content = rp.content;
		system = rp.system ? rp.system : a->system;
		g->prompt_name = rp.name;
		g->prompt_version = rp.version;
		g->checks = rp.checks ? DatumGetJsonbPCopy(JsonbPGetDatum(rp.checks)) : NULL;
		if (rp.system == NULL && system != NULL)
			maester_prompt_hash(system, content, g->prompt_hash);
		else
			memcpy(g->prompt_hash, rp.hash, sizeof(g->prompt_hash));
	}
	else
	{
		content = a->prompt;
		system = a->system;
		maester_prompt_hash(system, content, g->prompt_hash);
	}
	c->content = content;
	c->system = system;

	/* route */
	{
		Span	   *span = trace_span_start(g->trace, "model_route");

		trace_attr_str(span, "gen_ai.request.model", g->requested_model ? g->requested_model : "(default route)");
		c->plan = router_plan(g->requested_model);
		trace_attr_num(span, "maester.route.targets", c->plan->ntargets);
		trace_span_end(span, NULL);
	}
	c->opts.gen.prompt = text_to_cstring(content);
	c->opts.gen.system = system ? text_to_cstring(system) : NULL;
	c->opts.gen.max_tokens = a->max_tokens;
	{
		Span	   *root = &g->trace->spans[0];

		trace_attr_str(root, "gen_ai.operation.name", "chat");
		trace_attr_str(root, "gen_ai.request.model", g->requested_model);
		trace_attr_str(root, "gen_ai.prompt.name", g->prompt_name);
		trace_attr_str(root, "maester.prompt.version", g->prompt_version);
		trace_attr_str(root, "maester.prompt.hash", g->prompt_hash);
		if (c->opts.gen.max_tokens > 0)
			trace_attr_num(root, "gen_ai.request.max_tokens", c->opts.gen.max_tokens);
	}

	/* the call's state; fail closed: no ledger, no call */
	c->cs.slot = ledger_attach();
	c->cs.deadline = GetCurrentTimestamp() + (TimestampTz) c->opts.timeout_ms * 1000;
	/* worst case: a token per byte, plus the chat format's overhead */
	c->cs.est_input_tokens = strlen(c->opts.gen.prompt) +
		(c->opts.gen.system ? strlen(c->opts.gen.system) : 0) + 16;
	initStringInfo(&c->cs.log);
	c->ntargets = c->opts.fallback ? c->plan->ntargets : Min(c->plan->ntargets, 1);
	c->phase = PHASE_TARGET;
	MemoryContextSwitchTo(old);
	return c;
}

/*
 * A call that succeeded: usage flags, the root span, its spans queued,
 * statistics, the model_routed log line, and the capture.
 */
static void
call_succeeded_finish(Call *c)
{
	Generation *g = &c->g;
	Span	   *root = &g->trace->spans[0];

	/* once only, whatever happens to the transaction it runs in */
	if (c->finished)
		return;
	c->finished = true;
	g->latency_ms = elapsed_ms(c->started);
	g->usage_estimated = !g->resp.usage_present;
	if (c->cs.downgraded)
		g->fallback_used = true;

	trace_attr_str(root, "gen_ai.provider.name", g->provider);
	trace_attr_str(root, "gen_ai.response.model", g->model);
	trace_attr_num(root, "gen_ai.usage.input_tokens", g->resp.input_tokens);
	trace_attr_num(root, "gen_ai.usage.output_tokens", g->resp.output_tokens);
	if (g->cost)
		trace_attr_raw(root, "maester.cost_usd",
					   DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(g->cost))));
	if (g->evaluation)
		trace_attr_str(root, "maester.evaluation.status",
					   json_get_string(&g->evaluation->root, "status"));
	trace_flush(g->trace, "ok", c->tenant, &g->request_id);
	stat_call(g->provider, g->model, false, g->attempts, g->fallback_used, g->latency_ms);

	ereport(maester_routing_log_level,
			(errmsg("model_routed requested_model=%s selected_provider=%s model=%s fallback_used=%s attempts=%d",
					g->requested_model ? g->requested_model : "(default)",
					g->provider, g->model, g->fallback_used ? "true" : "false",
					g->attempts),
			 errhidestmt(true)));

	/* last: the only step that writes in the caller's transaction */
	if (maester_capture_content)
		capture_call(g, c->content, c->system, c->args.variables, c->args.options,
					 c->opts.gen.max_tokens);
}

/* The maester.generation fields of a call (22 values) */
#define GENERATION_NATTS CALL_GENERATION_NATTS

static void
generation_values(Generation *g, Datum *values, bool *nulls)
{
	memset(nulls, 0, sizeof(bool) * GENERATION_NATTS);
	values[0] = UUIDPGetDatum(&g->request_id);
	values[1] = CStringGetTextDatum(g->trace_id);
	if (g->provider)
	{
		values[2] = CStringGetTextDatum(g->provider);
		values[3] = CStringGetTextDatum(g->model);
		values[4] = CStringGetTextDatum(g->resp.content);
	}
	else
		nulls[2] = nulls[3] = nulls[4] = true;
	if (g->resp.finish_reason)
		values[5] = CStringGetTextDatum(g->resp.finish_reason);
	else
		nulls[5] = true;
	values[6] = Int64GetDatum(g->resp.input_tokens);
	values[7] = Int64GetDatum(g->resp.output_tokens);
	values[8] = Int64GetDatum(g->resp.cached_input_tokens);
	values[9] = Int64GetDatum(g->resp.cache_write_tokens);
	values[10] = BoolGetDatum(g->usage_estimated);
	values[11] = Float8GetDatum(g->latency_ms);
	values[12] = Int32GetDatum(g->attempts);
	values[13] = BoolGetDatum(g->fallback_used);
	if (g->prompt_name)
	{
		values[14] = CStringGetTextDatum(g->prompt_name);
		values[15] = CStringGetTextDatum(g->prompt_version);
	}
	else
		nulls[14] = nulls[15] = true;
	values[16] = CStringGetTextDatum(g->prompt_hash);
	if (g->requested_model)
		values[17] = CStringGetTextDatum(g->requested_model);
	else
		nulls[17] = true;
	if (g->resp.response_id)
		values[18] = CStringGetTextDatum(g->resp.response_id);
	else
		nulls[18] = true;
	if (g->cost)
		values[19] = NumericGetDatum(g->cost);
	else
		nulls[19] = true;
	values[20] = BoolGetDatum(g->priced);
	if (g->evaluation)
		values[21] = JsonbPGetDatum(g->evaluation);
	else
		nulls[21] = true;
}

/* llm_generate's one call */
typedef struct SingleCall
{
	Call	   *call;
	bool		taken;
	Call	   *result;
} SingleCall;

static Call *
single_next(void *arg)
{
	SingleCall *s = (SingleCall *) arg;

	if (s->taken)
		return NULL;
	s->taken = true;
	return s->call;
}

static void
single_done(Call *c, void *arg)
{
	((SingleCall *) arg)->result = c;
}

PG_FUNCTION_INFO_V1(llm_generate);
/*
 * maester.llm_generate(prompt text, model text, max_tokens int, system text,
 *						prompt_name text, variables jsonb,
 *						prompt_version text, options jsonb)
 *	 RETURNS maester.generation
 */
Datum
llm_generate(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	CallArgs	a;
	SingleCall	s;
	Call	   *c;
	Datum		values[GENERATION_NATTS];
	bool		nulls[GENERATION_NATTS];

	maester_require_preload();

	memset(&a, 0, sizeof(a));
	a.prompt = PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0);
	a.model = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (!PG_ARGISNULL(2))
	{
		a.max_tokens = PG_GETARG_INT32(2);
		if (a.max_tokens <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("max_tokens must be positive")));
	}
	a.system = PG_ARGISNULL(3) ? NULL : PG_GETARG_TEXT_PP(3);
	a.prompt_name = PG_ARGISNULL(4) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(4));
	a.variables = PG_ARGISNULL(5) ? NULL : PG_GETARG_JSONB_P(5);
	a.prompt_version = PG_ARGISNULL(6) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(6));
	a.options = PG_ARGISNULL(7) ? NULL : PG_GETARG_JSONB_P(7);

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "llm_generate must return a composite type");
	tupdesc = BlessTupleDesc(tupdesc);

	memset(&s, 0, sizeof(s));
	s.call = call_prepare(&a, 1, CurrentMemoryContext, NULL);
	{
		CallDriver	d = {.next = single_next, .done = single_done, .arg = &s,
		.concurrency = 1, .isolation = CALLS_SHARED};

		run_calls(&d);
	}
	c = s.result;
	if (c->phase == PHASE_FAILED)
		ereport(ERROR,
				(errcode(c->sqlstate),
				 errmsg_internal("%s", c->message),
				 c->detail ? errdetail_internal("%s", c->detail) : 0,
				 c->hint ? errhint("%s", c->hint) : 0));
	call_succeeded_finish(c);
	generation_values(&c->g, values, nulls);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* generate_batch's state */
typedef struct BatchState
{
	Datum	   *requests;
	bool	   *request_nulls;
	int			nrequests;
	int			next;
	text	   *model;			/* defaults for requests that give none */
	text	   *prompt_name;
	Jsonb	   *options;
	bool		fail_fast;
	MemoryContext cxt;			/* parent of the calls' contexts */
	ReturnSetInfo *rsinfo;
} BatchState;

#define REQUEST_KEYS "prompt, model, max_tokens, system, prompt_name, variables, prompt_version, options"

/* Raise 22023 for a bad request member */
static void
request_error(const char *key, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("request member \"%s\" must be %s", key, what)));
}

/* A string member (or JSON null) of a request */
static text *
request_text(JsonbValue *v, const char *key)
{
	if (v->type == jbvNull)
		return NULL;
	if (v->type != jbvString)
		request_error(key, "a string");
	return cstring_to_text_with_len(v->val.string.val, v->val.string.len);
}

/* An object member (or JSON null) of a request, as its own Jsonb */
static Jsonb *
request_object(JsonbValue *v, const char *key)
{
	if (v->type == jbvNull)
		return NULL;
	if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
		request_error(key, "a JSON object");
	return JsonbValueToJsonb(v);
}

/*
 * A request -- an object with llm_generate's argument names -- as call
 * arguments.  Raises 22023.  *has_model says whether "model" was given
 * (null included).
 */
static void
request_parse(Jsonb *req, CallArgs *a, bool *has_model)
{
	JsonbIterator *it;
	JsonbValue	k;
	JsonbIteratorToken tok;
	text	   *t;

	memset(a, 0, sizeof(*a));
	*has_model = false;
	if (!JB_ROOT_IS_OBJECT(req))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a request must be a JSON object"),
				 errhint("Its members are llm_generate's arguments: " REQUEST_KEYS ".")));

	it = JsonbIteratorInit(&req->root);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		char	   *key;
		JsonbValue	v;

		if (tok != WJB_KEY)
			continue;
		key = pnstrdup(k.val.string.val, k.val.string.len);
		tok = JsonbIteratorNext(&it, &v, true);
		if (strcmp(key, "prompt") == 0)
			a->prompt = request_text(&v, key);
		else if (strcmp(key, "system") == 0)
			a->system = request_text(&v, key);
		else if (strcmp(key, "model") == 0)
		{
			t = request_text(&v, key);
			a->model = t ? text_to_cstring(t) : NULL;
			*has_model = true;
		}
		else if (strcmp(key, "prompt_name") == 0)
		{
			t = request_text(&v, key);
			a->prompt_name = t ? text_to_cstring(t) : NULL;
		}
		else if (strcmp(key, "prompt_version") == 0)
		{
			t = request_text(&v, key);
			a->prompt_version = t ? text_to_cstring(t) : NULL;
		}
		else if (strcmp(key, "variables") == 0)
			a->variables = request_object(&v, key);
		else if (strcmp(key, "options") == 0)
			a->options = request_object(&v, key);
		else if (strcmp(key, "max_tokens") == 0)
		{
			double		d;

			if (v.type == jbvNull)
				continue;
			if (v.type != jbvNumeric)
				request_error(key, "a positive integer");
			d = DatumGetFloat8(DirectFunctionCall1(numeric_float8,
												   NumericGetDatum(v.val.numeric)));
			if (!(d >= 1 && d <= INT_MAX) || d != floor(d))
				request_error(key, "a positive integer");
			a->max_tokens = (int) d;
		}
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown request member \"%s\"", key),
					 errhint("Known members: " REQUEST_KEYS ".")));
	}

}

/* One request of the batch, with the batch's defaults; raises */
static void
request_args(BatchState *b, int i, CallArgs *a)
{
	bool		has_model;

	if (b->request_nulls[i])
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("request %d is NULL", i + 1)));
	request_parse(DatumGetJsonbP(b->requests[i]), a, &has_model);

	/* the batch's defaults */
	if (!has_model && b->model)
		a->model = text_to_cstring(b->model);
	if (a->prompt == NULL && a->prompt_name == NULL && b->prompt_name)
		a->prompt_name = text_to_cstring(b->prompt_name);
	if (b->options && a->options)
		a->options = DatumGetJsonbP(DirectFunctionCall2(jsonb_concat,
														JsonbPGetDatum(b->options),
														JsonbPGetDatum(a->options)));
	else if (b->options)
		a->options = b->options;
}

/* What batch_prepare_fn needs, and what it makes */
typedef struct BatchPrep
{
	BatchState *b;
	int			i;
	MemoryContext cxt;
	Call	   *c;
} BatchPrep;

static void
batch_prepare_fn(void *arg)
{
	BatchPrep  *bp = (BatchPrep *) arg;
	MemoryContext old = MemoryContextSwitchTo(bp->cxt);
	CallArgs	a;

	request_args(bp->b, bp->i, &a);
	bp->c = call_prepare(&a, bp->i + 1, bp->cxt, NULL);
	MemoryContextSwitchTo(old);
}

/*
 * The next request of the batch, prepared in a subtransaction: a request
 * that cannot be prepared (a bad member, an unknown prompt, a missing
 * variable, a model nobody serves) is a FAILED call, not the batch's error.
 */
static Call *
batch_next(void *arg)
{
	BatchState *b = (BatchState *) arg;
	BatchPrep	bp;
	ErrorData  *edata;

	if (b->next >= b->nrequests)
		return NULL;
	bp.b = b;
	bp.i = b->next++;
	bp.cxt = AllocSetContextCreate(b->cxt, "maester call", ALLOCSET_DEFAULT_SIZES);
	bp.c = NULL;
	edata = maester_subxact(batch_prepare_fn, &bp, bp.cxt);
	if (edata == NULL)
		return bp.c;
	if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
		edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
		ReThrowError(edata);
	return call_from_error(bp.i + 1, bp.cxt, edata);
}

/*
 * call_succeeded_finish in a subtransaction: the call succeeded and is in
 * the ledger, so a failure here (the capture's INSERT, say) is a WARNING,
 * not the batch's error.
 */
static void
finish_success_fn(void *arg)
{
	call_succeeded_finish((Call *) arg);
}

static void
batch_finish_success(Call *c)
{
	ErrorData  *edata = maester_subxact(finish_success_fn, c, c->cxt);

	if (edata == NULL)
		return;
	if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
		edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
		ReThrowError(edata);
	ereport(WARNING,
			(errmsg("request %d of the batch succeeded, but recording it failed: %s",
					c->ordinal, edata->message)));
}

/* A finished call of the batch: its row; then its memory goes */
static void
batch_done(Call *c, void *arg)
{
	BatchState *b = (BatchState *) arg;
	Datum		values[GENERATION_NATTS + 5];
	bool		nulls[GENERATION_NATTS + 5];
	MemoryContext old = MemoryContextSwitchTo(c->cxt);

	if (c->phase == PHASE_FAILED && b->fail_fast)
		ereport(ERROR,
				(errcode(c->sqlstate),
				 errmsg("request %d of the batch failed: %s", c->ordinal, c->message),
				 c->detail ? errdetail_internal("%s", c->detail) : 0,
				 c->hint ? errhint("%s", c->hint) : 0,
				 errcontext("maester.generate_batch with fail_fast")));

	memset(nulls, 0, sizeof(nulls));
	values[0] = Int32GetDatum(c->ordinal);
	if (c->phase == PHASE_DONE)
		batch_finish_success(c);
	if (c->g.trace != NULL)
		generation_values(&c->g, values + 1, nulls + 1);
	else
		for (int k = 1; k <= GENERATION_NATTS; k++)
			nulls[k] = true;
	if (c->phase == PHASE_FAILED)
	{
		values[GENERATION_NATTS + 1] = CStringGetTextDatum(unpack_sql_state(c->sqlstate));
		values[GENERATION_NATTS + 2] = CStringGetTextDatum(c->error_class ? c->error_class : "error");
		values[GENERATION_NATTS + 3] = CStringGetTextDatum(c->message ? c->message : "");
		if (c->detail)
			values[GENERATION_NATTS + 4] = CStringGetTextDatum(c->detail);
		else
			nulls[GENERATION_NATTS + 4] = true;
	}
	else
		for (int k = GENERATION_NATTS + 1; k <= GENERATION_NATTS + 4; k++)
			nulls[k] = true;
	tuplestore_putvalues(b->rsinfo->setResult, b->rsinfo->setDesc, values, nulls);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(c->cxt);
}

/*
 * For drivers outside this file (call.h).
 */

/* A call from a request object; raises what llm_generate would */
Call *
call_from_request(Jsonb *request, int ordinal, MemoryContext cxt,
				  const pg_uuid_t *request_id)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	CallArgs	a;
	bool		has_model;
	Call	   *c;

	request_parse(request, &a, &has_model);
	c = call_prepare(&a, ordinal, cxt, request_id);
	MemoryContextSwitchTo(old);
	return c;
}

/* Check a request's shape (members and their types); raises 22023 */
void
call_validate_request(Jsonb *request)
{
	CallArgs	a;
	bool		has_model;

	request_parse(request, &a, &has_model);
	if ((a.prompt == NULL) == (a.prompt_name == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("give exactly one of prompt and prompt_name"),
				 errhint("A request is an object with llm_generate's argument names: " REQUEST_KEYS ".")));
	if (a.options)
	{
		CallOptions o;

		parse_options(a.options, &o);
	}
}

/* A call that failed before it started (a bad request, ...) */
Call *
call_from_error(int ordinal, MemoryContext cxt, ErrorData *edata)
{
	Call	   *c = MemoryContextAllocZero(cxt, sizeof(Call));

	c->ordinal = ordinal;
	c->cxt = cxt;
	c->phase = PHASE_FAILED;
	c->sqlstate = edata->sqlerrcode;
	c->error_class = "invalid_request";
	c->message = MemoryContextStrdup(cxt, edata->message ? edata->message : "");
	c->detail = edata->detail ? MemoryContextStrdup(cxt, edata->detail) : NULL;
	c->hint = edata->hint ? MemoryContextStrdup(cxt, edata->hint) : NULL;
	return c;
}

int
call_ordinal(Call *c)
{
	return c->ordinal;
}

MemoryContext
call_context(Call *c)
{
	return c->cxt;
}

bool
call_succeeded(Call *c)
{
	return c->phase == PHASE_DONE;
}

/* A DONE call: capture, spans, statistics, log line (needs a transaction) */
void
call_finish_success(Call *c)
{
	call_succeeded_finish(c);
}

/* The maester.generation fields of a prepared call; false if none */
bool
call_generation_values(Call *c, Datum *values, bool *nulls)
{
	if (c->g.trace == NULL)
		return false;
	generation_values(&c->g, values, nulls);
	return true;
}

void
call_error(Call *c, int *sqlstate, const char **error_class,
		   const char **message, const char **detail)
{
	*sqlstate = c->sqlstate;
	*error_class = c->error_class ? c->error_class : "error";
	*message = c->message ? c->message : "";
	*detail = c->detail;
}

/* Ask run_calls to stop the call (at its next round) */
void
call_request_cancel(Call *c)
{
	c->cancel_requested = true;
}

PG_FUNCTION_INFO_V1(generate_batch);
/*
 * maester.generate_batch(requests jsonb[], concurrency int, model text,
 *						  prompt_name text, options jsonb, fail_fast bool)
 *	 RETURNS SETOF maester.batch_result
 *
 * Runs the requests concurrently (at most `concurrency` in flight) through
 * the call machine, one row per request in the order they finish.  Rows go
 * to a tuplestore (spilled to disk past work_mem) and each call's memory
 * is freed when its row is written, so memory stays bounded whatever the
 * number of requests.
 */
Datum
generate_batch(PG_FUNCTION_ARGS)
{
	BatchState	b;
	int			concurrency;
	ArrayType  *arr;

	maester_require_preload();
	InitMaterializedSRF(fcinfo, 0);

	concurrency = PG_ARGISNULL(1) ? 16 : PG_GETARG_INT32(1);
	if (concurrency < 1 || concurrency > MAESTER_MAX_CONCURRENCY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("concurrency must be between 1 and %d", MAESTER_MAX_CONCURRENCY)));
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	arr = PG_GETARG_ARRAYTYPE_P(0);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("requests must be a one-dimensional array")));

	memset(&b, 0, sizeof(b));
	deconstruct_array(arr, JSONBOID, -1, false, TYPALIGN_INT,
					  &b.requests, &b.request_nulls, &b.nrequests);
	b.model = PG_ARGISNULL(2) ? NULL : PG_GETARG_TEXT_PP(2);
	b.prompt_name = PG_ARGISNULL(3) ? NULL : PG_GETARG_TEXT_PP(3);
	b.options = PG_ARGISNULL(4) ? NULL : PG_GETARG_JSONB_P(4);
	b.fail_fast = PG_ARGISNULL(5) ? false : PG_GETARG_BOOL(5);
	b.rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	b.cxt = AllocSetContextCreate(CurrentMemoryContext, "maester batch",
								  ALLOCSET_DEFAULT_SIZES);
	if (b.options && !JB_ROOT_IS_OBJECT(b.options))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("options must be a JSON object")));

	{
		CallDriver	d = {.next = batch_next, .done = batch_done, .arg = &b,
			.concurrency = Min(concurrency, Max(b.nrequests, 1)),
		.isolation = CALLS_SUBXACT};

		run_calls(&d);
	}
	MemoryContextDelete(b.cxt);
	PG_RETURN_NULL();
}

#define RUBRIC_SYSTEM "You grade the output of an AI system against a rubric. " \
	"Answer with one JSON object and nothing else: " \
	"{\"pass\": true or false, \"score\": a number from 0 to 1, \"reason\": \"one sentence\"}."

/*
 * The llm_rubric check: a model grades `content` against a rubric, through
 * the gateway (so its cost is a ledger row, with purpose 'evaluation').
 * The parameter is the rubric, or {"rubric", "model"}; in an assertion,
 * "value" is the rubric and "model" may stand beside it.  A grader answer
 * that is not {"pass", "score"} fails the check, saying so.
 */
void
maester_llm_rubric(JsonbValue *param, JsonbContainer *extra, const char *content,
				   int len, double *score, bool *passed, char **reason)
{
	char	   *rubric = NULL;
	char	   *volatile model = NULL;
	char	   *prompt;
	char	   *volatile answer = NULL;
	const char *save = maester_call_purpose;
	Jsonb	   *verdict;
	char	   *problem = NULL;
	JsonbValue *pv;
	JsonbValue *sv;
	MemoryContext cxt = CurrentMemoryContext;

	if (param != NULL && param->type == jbvString)
		rubric = pnstrdup(param->val.string.val, param->val.string.len);
	else if (param != NULL && param->type == jbvBinary && JsonContainerIsObject(param->val.binary.data))
	{
		rubric = json_get_string(param->val.binary.data, "rubric");
		model = json_get_string(param->val.binary.data, "model");
	}
	if (model == NULL && extra != NULL)
		model = json_get_string(extra, "model");
	if (rubric == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("check \"llm_rubric\" needs a rubric"),
				 errhint("Write {\"llm_rubric\": \"The answer names the service.\"} or {\"llm_rubric\": {\"rubric\": \"...\", \"model\": \"...\"}}.")));
	prompt = psprintf("Rubric:\n%s\n\nOutput to grade:\n%.*s", rubric, len, content);

	maester_call_purpose = "evaluation";
	PG_TRY();
	{
		Datum		args[3];
		char		nulls[3] = {' ', ' ', ' '};
		Oid			types[3] = {TEXTOID, TEXTOID, TEXTOID};

		args[0] = CStringGetTextDatum(prompt);
		args[1] = model ? CStringGetTextDatum(model) : (Datum) 0;
		nulls[1] = model ? ' ' : 'n';
		args[2] = CStringGetTextDatum(RUBRIC_SYSTEM);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute_with_args("SELECT g.content FROM maester.llm_generate(prompt => $1, model => $2, "
								  "system => $3, options => '{\"response_format\": \"json\", \"temperature\": 0}') g",
								  3, types, args, nulls, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "the llm_rubric grader returned nothing");
		{
			char	   *a = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

			answer = a ? MemoryContextStrdup(cxt, a) : NULL;
		}
		SPI_finish();
	}
	PG_FINALLY();
	{
		maester_call_purpose = save;
	}
	PG_END_TRY();

	verdict = answer ? provider_parse_json(answer, &problem) : NULL;
	pv = verdict ? json_get(&verdict->root, "pass") : NULL;
	sv = verdict ? json_get(&verdict->root, "score") : NULL;
	if (pv == NULL || pv->type != jbvBool)
	{
		*score = 0;
		*passed = false;
		*reason = pstrdup("The grader did not answer with a JSON verdict {pass, score, reason}");
		return;
	}
	*passed = pv->val.boolean;
	*score = *passed ? 1 : 0;
	if (sv && sv->type == jbvNumeric)
	{
		double		d = DatumGetFloat8(DirectFunctionCall1(numeric_float8, NumericGetDatum(sv->val.numeric)));

		if (d >= 0 && d <= 1)
			*score = d;
	}
	*reason = *passed ? NULL : json_get_string(&verdict->root, "reason");
	if (!*passed && *reason == NULL)
		*reason = pstrdup("The grader failed the output");
}

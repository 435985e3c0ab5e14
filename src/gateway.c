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
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"
#include "utils/wait_event.h"

#include "budget.h"
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
	char	   *message;
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

/* Sleep `ms` on the latch, honouring interrupts */
static void
gateway_sleep(double ms)
{
	TimestampTz until = GetCurrentTimestamp() + (TimestampTz) (ms * 1000.0);

	for (;;)
	{
		long		left = (long) ((until - GetCurrentTimestamp()) / 1000);

		if (left <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 left, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
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
 * One attempt against one target.  Returns true with `out` filled on
 * success; false with `f` filled otherwise.  `key` may be NULL.
 */
static bool
attempt(RouteTarget *t, const GenRequest *gen, const char *key,
		const pg_uuid_t *request_id, const char *traceparent, long timeout_ms,
		GenResponse *out, Failure *f)
{
	ProviderConf *p = t->provider;
	HttpRequest req;
	StringInfoData body;
	volatile bool ok = false;
	char	   *url = provider_url(p->kind, p->base_url);

	memset(f, 0, sizeof(*f));
	f->retry_after_ms = -1;
	initStringInfo(&body);
	provider_build_body(p->kind, gen, &body);

	http_request_init(&req);
	http_check_url(url, &req.allow_private);
	req.url = url;
	/* providers speak UTF-8, whatever the database's encoding */
	req.body = pg_server_to_any(body.data, body.len, PG_UTF8);
	req.body_len = strlen(req.body);
	req.connect_timeout_ms = Min((long) p->connect_timeout_ms, timeout_ms);
	req.timeout_ms = timeout_ms;

	PG_TRY();
	{
		HttpRequest *one = &req;

		req.headers = build_headers(p, key, request_id, traceparent);
		http_perform(&one, 1);
		free_headers(&req);

		switch (req.outcome)
		{
			case HTTP_OK:
				if (req.status >= 200 && req.status < 300)
				{
					char	   *problem = NULL;

					if (req.content_type[0] != '\0' &&
						strstr(req.content_type, "json") == NULL)
					{
						f->error_class = "bad_response";
						f->sqlstate = ERRCODE_MAESTER_BAD_RESPONSE;
						f->counts = true;
						f->message = psprintf("%s answered with content type \"%s\", not JSON",
											  p->name, req.content_type);
					}
					else if (!pg_verify_mbstr(PG_UTF8, req.response, req.response_len, true))
					{
						f->error_class = "bad_response";
						f->sqlstate = ERRCODE_MAESTER_BAD_RESPONSE;
						f->counts = true;
						f->message = psprintf("%s answered with text that is not valid UTF-8",
											  p->name);
					}
					else if (provider_parse_response(p->kind,
													 pg_any_to_server(req.response,
																	  req.response_len,
																	  PG_UTF8),
													 out, &problem))
						ok = true;
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
					classify_status(req.status, f);
					f->http_status = (int) req.status;
					f->retry_after_ms = req.retry_after_ms;
					if (strcmp(f->error_class, "redirect") == 0)
						f->message = psprintf("%s answered HTTP %ld, a redirect, which is not followed",
											  p->name, req.status);
					else
						f->message = psprintf("%s answered HTTP %ld: %s", p->name, req.status,
											  provider_error_summary(req.response,
																	 req.response_len, key));
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
				f->error_class = req.outcome == HTTP_CONNECT_FAILED ? "connection" : "network";
				f->sqlstate = ERRCODE_MAESTER_UNREACHABLE;
				f->retryable = f->counts = true;
				f->message = psprintf("%s: %s", p->name, req.error);
				break;
			case HTTP_TOO_LARGE:
				f->error_class = "too_large";
				f->sqlstate = ERRCODE_MAESTER_BAD_RESPONSE;
				f->message = psprintf("%s: %s", p->name, req.error);
				break;
			case HTTP_EGRESS_DENIED:
				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						 errmsg("egress to provider \"%s\" refused", p->name),
						 errdetail("Its host resolved to %s, a private or loopback address.",
								   req.egress_reason),
						 errhint("A superuser can allow a local server by listing its host in maester.allow_insecure_hosts.")));
				break;
			case HTTP_INTERNAL_ERROR:
				f->error_class = "internal";
				f->sqlstate = ERRCODE_MAESTER_UNREACHABLE;
				f->message = psprintf("%s: %s", p->name, req.error);
				break;
		}
	}
	PG_FINALLY();
	{
		free_headers(&req);
		http_request_cleanup(&req);
	}
	PG_END_TRY();
	return ok;
}

/*
 * attempt(), and when it throws (cancel, timeout, egress refusal) after
 * this call was admitted as the circuit's probe, hand the probe back.
 */
pg_noinline static bool
attempt_releasing_probe(RouteTarget *t, const GenRequest *gen, const char *key,
						const pg_uuid_t *request_id, const char *traceparent,
						long timeout_ms, GenResponse *out, Failure *f, bool probe)
{
	volatile bool ok = false;

	PG_TRY();
	{
		ok = attempt(t, gen, key, request_id, traceparent, timeout_ms, out, f);
	}
	PG_CATCH();
	{
		if (probe)
			circuit_release_probe(t->provider);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return ok;
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

/* The attempt whose ledger row is in flight, for the exit callback */
static LedgerRecord *InFlight = NULL;
static LedgerSlot *InFlightSlot = NULL;
static BudgetHold InFlightHold;
static bool InFlightSent = false;	/* the request may have left */
static bool ExitCallbackRegistered = false;

/*
 * Backend exit (pg_terminate_backend during a call, which does not unwind
 * through PG_CATCH): settle the in-flight attempt as cancelled, charged at
 * its estimate, without waiting.
 */
static void
ledger_backend_exit(int code, Datum arg)
{
	if (InFlight == NULL || InFlightSlot == NULL)
		return;
	InFlight->kind = LEDGER_SETTLE;
	strlcpy(InFlight->status, "cancelled", sizeof(InFlight->status));
	strlcpy(InFlight->error_class, "terminated", sizeof(InFlight->error_class));
	if (InFlightSent)
		InFlight->cost[0] = '\0';	/* keep the estimate */
	else
		strlcpy(InFlight->cost, "0", sizeof(InFlight->cost));
	InFlight->settled_at = GetCurrentTimestamp();
	(void) ledger_try_enqueue(InFlightSlot, InFlight);
	InFlight = NULL;
	if (InFlightSent)
		budget_settle_at_estimate(&InFlightHold);
	else
		budget_settle(&InFlightHold, NULL);
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
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	Jsonb	   *ctx;
	Jsonb	   *volatile result = NULL;
	const char *content = g->resp.content;
	int			len = strlen(g->resp.content);

	ctx = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(
		g->cost ? psprintf("{\"latency_ms\": %.3f, \"cost_usd\": %s}", latency_ms,
						   DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(g->cost))))
		: psprintf("{\"latency_ms\": %.3f}", latency_ms))));
	if (g->checks == NULL)
		return maester_evaluate(content, len, NULL, ctx);

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		result = maester_evaluate(content, len, g->checks, ctx);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
			ReThrowError(edata);
		ereport(WARNING,
				(errmsg("evaluation of the output failed: %s", edata->message),
				 errhint("Check the checks registered with prompt \"%s\".",
						 g->prompt_name ? g->prompt_name : "")));
		{
			StringInfoData j;

			initStringInfo(&j);
			appendStringInfoString(&j, "{\"status\": \"error\", \"reliability_score\": 0, \"metrics\": [], \"error\": ");
			escape_json(&j, edata->message);
			appendStringInfoChar(&j, '}');
			result = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(j.data)));
		}
	}
	PG_END_TRY();
	return result;
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

/*
 * One attempt with its ledger row: PENDING made durable before anything
 * is sent (else MG006 and nothing leaves), then the attempt, then SETTLE,
 * made durable before returning.  On an error or cancel the row is
 * settled as cancelled -- charged at its estimate if the request may have
 * left -- and the error goes on.
 */
pg_noinline static bool
ledgered_attempt(RouteTarget *t, const GenRequest *gen, const char *key,
				 CallState *cs, Generation *g, long timeout_ms, Failure *f,
				 bool probe)
{
	LedgerRecord *r = palloc(sizeof(LedgerRecord));
	volatile bool sent = false;
	bool		ok = false;
	uint64		seq;
	TimestampTz start = 0;
	Numeric		estimate;
	BudgetHold	hold;
	BlockArg	ba;
	char	   *downgrade = NULL;
	BudgetVerdict verdict;
	Span	   *span;
	Span	   *volatile gen_span = NULL;

	estimate = fill_pending(r, t, g, cs, gen->max_tokens);
	if (!ExitCallbackRegistered)
	{
		before_shmem_exit(ledger_backend_exit, (Datum) 0);
		ExitCallbackRegistered = true;
	}

	/* budgets: reserve the worst case, or block (MB001), or downgrade */
	ba.cs = cs;
	ba.r = r;
	span = trace_span_start(g->trace, "budget_check");
	if (estimate)
		trace_attr_raw(span, "maester.estimated_cost_usd",
					   DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(estimate))));
	verdict = budget_reserve(r->tenant, g->prompt_name, t->model, estimate, &hold,
							 &downgrade, write_blocked_row, &ba);
	trace_span_end(span, NULL);
	if (verdict == BUDGET_DOWNGRADE)
	{
		trace_attr_str(span, "maester.budget.downgrade_to", downgrade);
		memset(f, 0, sizeof(*f));
		f->error_class = "downgrade";
		f->sqlstate = ERRCODE_MAESTER_UNAVAILABLE;
		f->message = psprintf("a budget downgraded the call to \"%s\"", downgrade);
		cs->downgrade_to = downgrade;
		pfree(r);
		return false;
	}

	/*
	 * A budget reserved max_tokens output tokens (4,096 when the caller gave
	 * none): ask the provider for no more, so the reservation bounds the cost.
	 */
	if (hold.n > 0 && gen->max_tokens <= 0)
		((GenRequest *) gen)->max_tokens = r->max_tokens;

	/*
	 * From the PENDING record on, the attempt is in flight: an error or a
	 * cancel anywhere before its SETTLE record is queued (while waiting,
	 * sending, metering or evaluating) settles it as cancelled -- charged at
	 * its estimate if the request may have left -- and releases the budget
	 * reservation; a FATAL exit does the same through ledger_backend_exit.
	 */
	PG_TRY();
	{
		seq = ledger_enqueue(cs->slot, r);
		InFlight = MemoryContextAlloc(TopMemoryContext, sizeof(LedgerRecord));
		memcpy(InFlight, r, sizeof(LedgerRecord));
		InFlightSlot = cs->slot;
		InFlightHold = hold;
		InFlightSent = false;
		ledger_wait_durable(cs->slot, seq, true);

		/* durable: from here on the request may leave */
		sent = true;
		InFlightSent = true;
		gen_span = trace_span_start(g->trace, "model_generate");
		trace_attr_str(gen_span, "gen_ai.operation.name", "chat");
		trace_attr_str(gen_span, "gen_ai.provider.name", t->provider->name);
		trace_attr_str(gen_span, "gen_ai.request.model", t->model);
		trace_attr_str(gen_span, "server.address", server_address(t->provider->base_url));
		trace_attr_num(gen_span, "maester.attempt", g->attempts);
		if (gen->max_tokens > 0)
			trace_attr_num(gen_span, "gen_ai.request.max_tokens", gen->max_tokens);
		if (gen->has_temperature)
			trace_attr_num(gen_span, "gen_ai.request.temperature", gen->temperature);
		g->traceparent = trace_traceparent_header(g->trace, gen_span);
		start = GetCurrentTimestamp();
		ok = attempt_releasing_probe(t, gen, key, &g->request_id, g->traceparent,
									 timeout_ms, &g->resp, f, probe);
		trace_span_end(gen_span, ok ? "ok" : "error");

		settle_attempt(t, gen, cs, g, f, r, ok, start, estimate, gen_span);

		/* queued: no longer in flight */
		seq = ledger_enqueue(cs->slot, r);
		pfree(InFlight);
		InFlight = NULL;
		InFlightHold.n = 0;
		if (ok)
			budget_settle(&hold, g->cost ? g->cost : estimate);
		else if (r->cost[0] == '\0')
			budget_settle_at_estimate(&hold);
		else
			budget_settle(&hold, NULL);
	}
	PG_CATCH();
	{
		HOLD_INTERRUPTS();
		if (InFlight)
		{
			pfree(InFlight);
			InFlight = NULL;
			InFlightHold.n = 0;
			r->kind = LEDGER_SETTLE;
			strlcpy(r->status, "cancelled", sizeof(r->status));
			strlcpy(r->error_class, "cancelled", sizeof(r->error_class));
			if (sent)
				r->cost[0] = '\0';		/* keep the estimate */
			else
				strlcpy(r->cost, "0", sizeof(r->cost));
			r->settled_at = GetCurrentTimestamp();
			(void) ledger_try_enqueue(cs->slot, r);
			if (sent)
				budget_settle_at_estimate(&hold);
			else
				budget_settle(&hold, NULL);
		}
		if (gen_span && gen_span->duration_us < 0)
			gen_span->status = "cancelled";
		RESUME_INTERRUPTS();
		PG_RE_THROW();
	}
	PG_END_TRY();

	(void) ledger_wait_durable(cs->slot, seq, false);
	pfree(r);
	return ok;
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

/*
 * The attempts on one target; true when one succeeded (and `g` is filled).
 */
static bool
try_target(RouteTarget *t, int ti, GenRequest *gen, CallOptions *opts,
		   const char *key, CallState *cs, Generation *g)
{
	ProviderConf *p = t->provider;
	int			max_attempts = opts->max_attempts > 0 ? opts->max_attempts :
	Max(p->max_attempts, 1);

	for (int a = 1; a <= max_attempts; a++)
	{
		long		remaining = (long) ((cs->deadline - GetCurrentTimestamp()) / 1000);
		CircuitAdmit admit;
		Failure		f;
		double		wait;
		bool		ok;

		if (remaining <= 0)
		{
			memset(&f, 0, sizeof(f));
			f.error_class = "timeout";
			f.sqlstate = ERRCODE_MAESTER_TIMEOUT;
			f.message = psprintf("the call's deadline of %d ms passed", opts->timeout_ms);
			note_failure(cs, p->name, &f);
			return false;
		}
		admit = circuit_admit(p);
		if (admit == CIRCUIT_SKIP)
		{
			memset(&f, 0, sizeof(f));
			f.error_class = "circuit_open";
			f.sqlstate = ERRCODE_MAESTER_UNAVAILABLE;
			f.message = psprintf("provider \"%s\" is failing: its circuit breaker is open", p->name);
			note_failure(cs, p->name, &f);
			return false;
		}

		gen->model = t->model;
		g->attempts++;
		g->fallback_used = ti > 0;
		ok = ledgered_attempt(t, gen, key, cs, g, Min((long) p->timeout_ms, remaining),
							  &f, admit == CIRCUIT_ADMIT_PROBE);
		if (ok)
		{
			circuit_record(p, true, false);
			g->provider = p->name;
			g->model = g->resp.served_model ? g->resp.served_model : t->model;
			g->fallback_used = ti > 0;
			return true;
		}
		if (cs->downgrade_to)
			return false;		/* the caller restarts with the cheaper model */
		circuit_record(p, false, f.counts);
		note_failure(cs, p->name, &f);
		if (!f.retryable || a == max_attempts)
			return false;

		/* wait before the next attempt, within the deadline */
		if (f.retry_after_ms >= 0)
		{
			if (f.retry_after_ms > maester_retry_after_max_ms)
				return false;	/* too long: fall back instead */
			wait = f.retry_after_ms;
		}
		else
			wait = backoff_ms(p, a);
		if (GetCurrentTimestamp() + (TimestampTz) (wait * 1000) >= cs->deadline)
		{
			cs->last.error_class = "timeout";
			cs->last.sqlstate = ERRCODE_MAESTER_TIMEOUT;
			cs->last.message = psprintf("%s; no time left for a retry within the call's deadline of %d ms",
										f.message, opts->timeout_ms);
			return false;
		}
		gateway_sleep(wait);
	}
	return false;
}

/*
 * Fetch the target's key, run its attempts, and wipe the key whatever
 * happens.  Not inlined, to keep PG_TRY out of the caller's loop.
 */
pg_noinline static bool
try_target_with_key(RouteTarget *t, int ti, GenRequest *gen, CallOptions *opts,
					CallState *cs, Generation *g)
{
	ProviderConf *p = t->provider;
	char	   *missing = NULL;
	char	   *key;
	volatile bool ok = false;

	key = maester_provider_key(p->name, p->api_key_env, p->api_key_file, &missing);
	if (missing)
	{
		Failure		f;

		memset(&f, 0, sizeof(f));
		f.error_class = "no_api_key";
		f.sqlstate = ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION;
		f.message = psprintf("API key of provider \"%s\" is not set: %s", p->name, missing);
		note_failure(cs, p->name, &f);
		return false;
	}
	PG_TRY();
	{
		ok = try_target(t, ti, gen, opts, key, cs, g);
	}
	PG_FINALLY();
	{
		maester_forget_key(key);
	}
	PG_END_TRY();
	return ok;
}

/*
 * Run the call: targets in order, attempts with retries; fill `g` or raise.
 */
static void
gateway_execute(RoutePlan *plan, GenRequest *gen, CallOptions *opts, Generation *g)
{
	TimestampTz start = GetCurrentTimestamp();
	CallState	cs;
	int			ntargets = opts->fallback ? plan->ntargets : Min(plan->ntargets, 1);

	memset(&cs, 0, sizeof(cs));
	cs.deadline = start + (TimestampTz) opts->timeout_ms * 1000;
	/* fail closed: no ledger, no call */
	cs.slot = ledger_attach();
	/* worst case: a token per byte, plus the chat format's overhead */
	cs.est_input_tokens = strlen(gen->prompt) + (gen->system ? strlen(gen->system) : 0) + 16;
	initStringInfo(&cs.log);
	g->attempts = 0;

	for (int ti = 0; ti < ntargets; ti++)
	{
		RouteTarget *t = &plan->targets[ti];

		if (!t->provider->enabled)
		{
			Failure		f;

			memset(&f, 0, sizeof(f));
			f.error_class = "disabled";
			f.sqlstate = ERRCODE_MAESTER_UNAVAILABLE;
			f.message = psprintf("provider \"%s\" is disabled", t->provider->name);
			note_failure(&cs, t->provider->name, &f);
			continue;
		}
		if (try_target_with_key(t, ti, gen, opts, &cs, g))
			break;
		if (cs.downgrade_to != NULL && cs.downgraded)
			ereport(ERROR,
					(errcode(MAKE_SQLSTATE('M', 'B', '0', '0', '1')),
					 errmsg("a budget is still exceeded after downgrading the call to \"%s\"",
							plan->requested ? plan->requested : "(default route)"),
					 errdetail("Nothing was sent.")));
		if (cs.downgrade_to != NULL && !cs.downgraded)
		{
			/* a budget asked for a cheaper model: start over with its plan, once */
			appendStringInfo(&cs.log, "%sbudget: downgrade to %s",
							 cs.log.len ? "; " : "", cs.downgrade_to);
			plan = router_plan(cs.downgrade_to);
			ntargets = opts->fallback ? plan->ntargets : Min(plan->ntargets, 1);
			cs.downgraded = true;
			cs.downgrade_to = NULL;
			ti = -1;
			g->fallback_used = true;
			continue;
		}
		if (GetCurrentTimestamp() >= cs.deadline)
			break;
	}
	if (cs.downgraded && g->provider != NULL)
		g->fallback_used = true;

	g->latency_ms = elapsed_ms(start);
	if (g->provider == NULL)
	{
		if (cs.last.error_class == NULL)
		{
			cs.last.sqlstate = ERRCODE_MAESTER_UNAVAILABLE;
			cs.last.message = pstrdup("no target could be tried");
		}
		ereport(ERROR,
				(errcode(cs.last.sqlstate),
				 errmsg("model call failed: %s", cs.last.message),
				 errdetail("Requested model: %s. Attempts: %s.",
						   plan->requested ? plan->requested : "(default route)",
						   cs.log.len ? cs.log.data : "none")));
	}
}

/* Estimate tokens of a text: about four characters a token */
static int64
estimate_tokens(const char *s)
{
	return s ? (pg_mbstrlen(s) + 3) / 4 : 0;
}

/*
 * gateway_execute, and when it fails (an error or a cancel), hand the
 * trace's spans to the worker before the error goes on.
 */
pg_noinline static void
execute_traced(RoutePlan *plan, CallOptions *opts, Generation *g)
{
	PG_TRY();
	{
		gateway_execute(plan, &opts->gen, opts, g);
	}
	PG_CATCH();
	{
		HOLD_INTERRUPTS();
		trace_flush_nothrow(g->trace, maester_tenant, &g->request_id);
		if (g->last_provider)
			stat_call(g->last_provider, g->last_model, true, g->attempts, g->fallback_used,
					  (double) (GetCurrentTimestamp() - g->trace->spans[0].start) / 1000.0);
		RESUME_INTERRUPTS();
		PG_RE_THROW();
	}
	PG_END_TRY();
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
	CallOptions opts;
	Generation	g;
	RoutePlan  *plan;
	text	   *content;
	text	   *system = NULL;
	Datum		values[22];
	bool		nulls[22];
	Numeric		cost;
	bool		priced;

	maester_require_preload();

	if (PG_ARGISNULL(0) == PG_ARGISNULL(4))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("give exactly one of prompt and prompt_name"),
				 errhint("Pass prompt => 'text' for a raw prompt, or prompt_name => 'name' to render one from the registry.")));
	if (PG_ARGISNULL(4) && (!PG_ARGISNULL(5) || !PG_ARGISNULL(6)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("variables and prompt_version go with prompt_name")));
	if (!PG_ARGISNULL(2) && PG_GETARG_INT32(2) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_tokens must be positive")));
	parse_options(PG_ARGISNULL(7) ? NULL : PG_GETARG_JSONB_P(7), &opts);

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "llm_generate must return a composite type");
	tupdesc = BlessTupleDesc(tupdesc);

	memset(&g, 0, sizeof(g));
	new_ids(&g.request_id, g.trace_id);
	g.trace = palloc(sizeof(CallTrace));
	trace_begin(g.trace);
	strlcpy(g.trace_id, g.trace->trace_id, sizeof(g.trace_id));
	g.tags = opts.tags;
	g.requested_model = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));

	/* the prompt */
	if (!PG_ARGISNULL(4))
	{
		RenderedPrompt rp;
		Span	   *span = trace_span_start(g.trace, "prompt_render");

		maester_render(text_to_cstring(PG_GETARG_TEXT_PP(4)),
					   PG_ARGISNULL(6) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(6)),
					   PG_ARGISNULL(5) ? NULL : PG_GETARG_JSONB_P(5), &rp);
		trace_attr_str(span, "gen_ai.prompt.name", rp.name);
		trace_attr_str(span, "maester.prompt.version", rp.version);
		trace_span_end(span, NULL);
		if (rp.system != NULL && !PG_ARGISNULL(3))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("prompt \"%s\" version \"%s\" has a system template; do not pass system",
							rp.name, rp.version)));
		content = rp.content;
		system = rp.system ? rp.system : (PG_ARGISNULL(3) ? NULL : PG_GETARG_TEXT_PP(3));
		g.prompt_name = rp.name;
		g.prompt_version = rp.version;
		g.checks = rp.checks ? DatumGetJsonbPCopy(JsonbPGetDatum(rp.checks)) : NULL;
		if (rp.system == NULL && system != NULL)
			maester_prompt_hash(system, content, g.prompt_hash);
		else
			memcpy(g.prompt_hash, rp.hash, sizeof(g.prompt_hash));
	}
	else
	{
		content = PG_GETARG_TEXT_PP(0);
		system = PG_ARGISNULL(3) ? NULL : PG_GETARG_TEXT_PP(3);
		maester_prompt_hash(system, content, g.prompt_hash);
	}

	/* route and call */
	{
		Span	   *span = trace_span_start(g.trace, "model_route");

		trace_attr_str(span, "gen_ai.request.model", g.requested_model ? g.requested_model : "(default route)");
		plan = router_plan(g.requested_model);
		trace_attr_num(span, "maester.route.targets", plan->ntargets);
		trace_span_end(span, NULL);
	}
	opts.gen.prompt = text_to_cstring(content);
	opts.gen.system = system ? text_to_cstring(system) : NULL;
	opts.gen.max_tokens = PG_ARGISNULL(2) ? 0 : PG_GETARG_INT32(2);
	{
		Span	   *root = &g.trace->spans[0];

		trace_attr_str(root, "gen_ai.operation.name", "chat");
		trace_attr_str(root, "gen_ai.request.model", g.requested_model);
		trace_attr_str(root, "gen_ai.prompt.name", g.prompt_name);
		trace_attr_str(root, "maester.prompt.version", g.prompt_version);
		trace_attr_str(root, "maester.prompt.hash", g.prompt_hash);
		if (opts.gen.max_tokens > 0)
			trace_attr_num(root, "gen_ai.request.max_tokens", opts.gen.max_tokens);
	}
	execute_traced(plan, &opts, &g);

	g.usage_estimated = !g.resp.usage_present;

	cost = g.cost;
	priced = g.priced;

	if (maester_capture_content)
		capture_call(&g, content, system, PG_ARGISNULL(5) ? NULL : PG_GETARG_JSONB_P(5),
					 PG_ARGISNULL(7) ? NULL : PG_GETARG_JSONB_P(7), opts.gen.max_tokens);

	{
		Span	   *root = &g.trace->spans[0];

		trace_attr_str(root, "gen_ai.provider.name", g.provider);
		trace_attr_str(root, "gen_ai.response.model", g.model);
		trace_attr_num(root, "gen_ai.usage.input_tokens", g.resp.input_tokens);
		trace_attr_num(root, "gen_ai.usage.output_tokens", g.resp.output_tokens);
		if (cost)
			trace_attr_raw(root, "maester.cost_usd",
						   DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(cost))));
		if (g.evaluation)
		{
			trace_attr_str(root, "maester.evaluation.status",
						   json_get_string(&g.evaluation->root, "status"));
		}
		trace_flush(g.trace, "ok", maester_tenant, &g.request_id);
		stat_call(g.provider, g.model, false, g.attempts, g.fallback_used, g.latency_ms);
	}

	ereport(maester_routing_log_level,
			(errmsg("model_routed requested_model=%s selected_provider=%s model=%s fallback_used=%s attempts=%d",
					g.requested_model ? g.requested_model : "(default)",
					g.provider, g.model, g.fallback_used ? "true" : "false",
					g.attempts),
			 errhidestmt(true)));

	memset(nulls, 0, sizeof(nulls));
	values[0] = UUIDPGetDatum(&g.request_id);
	values[1] = CStringGetTextDatum(g.trace_id);
	values[2] = CStringGetTextDatum(g.provider);
	values[3] = CStringGetTextDatum(g.model);
	values[4] = CStringGetTextDatum(g.resp.content);
	if (g.resp.finish_reason)
		values[5] = CStringGetTextDatum(g.resp.finish_reason);
	else
		nulls[5] = true;
	values[6] = Int64GetDatum(g.resp.input_tokens);
	values[7] = Int64GetDatum(g.resp.output_tokens);
	values[8] = Int64GetDatum(g.resp.cached_input_tokens);
	values[9] = Int64GetDatum(g.resp.cache_write_tokens);
	values[10] = BoolGetDatum(g.usage_estimated);
	values[11] = Float8GetDatum(g.latency_ms);
	values[12] = Int32GetDatum(g.attempts);
	values[13] = BoolGetDatum(g.fallback_used);
	if (g.prompt_name)
	{
		values[14] = CStringGetTextDatum(g.prompt_name);
		values[15] = CStringGetTextDatum(g.prompt_version);
	}
	else
		nulls[14] = nulls[15] = true;
	values[16] = CStringGetTextDatum(g.prompt_hash);
	if (g.requested_model)
		values[17] = CStringGetTextDatum(g.requested_model);
	else
		nulls[17] = true;
	if (g.resp.response_id)
		values[18] = CStringGetTextDatum(g.resp.response_id);
	else
		nulls[18] = true;
	if (cost)
		values[19] = NumericGetDatum(cost);
	else
		nulls[19] = true;
	values[20] = BoolGetDatum(priced);
	if (g.evaluation)
		values[21] = JsonbPGetDatum(g.evaluation);
	else
		nulls[21] = true;

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
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

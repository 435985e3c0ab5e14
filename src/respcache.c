/*-------------------------------------------------------------------------
 *
 * respcache.c
 *	  The response cache: an answer kept per tenant, returned again for
 *	  the same call without sending anything.
 *
 * Opt-in: options.cache (true, or {"ttl": "1 hour", "any_temperature":
 * true}), or the prompt version's config.cache.  The key is the SHA-256 of
 * everything that makes the answer: whether it is a text or a
 * conversation, the prompt's hash (the rendered text, or the
 * conversation's canonical form), the prompt name and version (a
 * version's config is immutable), the model or route asked for, max_tokens,
 * and every option except those that change only how the call is made
 * (tags, timeout_ms, max_attempts, fallback, sticky_key, cache,
 * cache_control).  Entries are per tenant -- the tenant is part of the
 * primary key, and a tenant can see and delete only its own -- and expire
 * after the TTL (maester.cache_ttl, 1 hour by default).
 *
 * A call that samples -- a temperature that is not 0, or none at all (the
 * providers' default is 1) -- is not cached unless any_temperature says
 * so: its ledger rows say cache = skipped.  An answer whose evaluation did
 * not pass is not kept, nor one a downgrade budget sent to another model.
 *
 * A hit is found when the call is prepared; the call machine then finishes
 * it at once (no budget, no pacing, no circuit, nothing sent): one ledger
 * row of status cached at $0, saved_usd what the answer cost when it was
 * made, its tokens, and the evaluation it had then; a cache_lookup span,
 * and the call's trace.  A miss is sent as usual and its answer is kept
 * when the call succeeds, in a subtransaction: a cache that cannot be
 * written (a read-only transaction) is a WARNING, never the call's error.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "call.h"
#include "catalog.h"
#include "inflight.h"
#include "jsonutil.h"
#include "ledger.h"
#include "respcache.h"
#include "settings.h"
#include "sha256.h"
#include "tenant.h"
#include "trace.h"
#include "util.h"

/* Options that change how a call is made, not what it answers */
static const char *const call_only_options[] = {
	"tags", "timeout_ms", "max_attempts", "fallback", "sticky_key", "cache", "cache_control"
};

/* The call's options as canonical JSON text, without the call-only ones */
static char *
answer_options(Call *c)
{
	Datum	   *keys = palloc(sizeof(Datum) * lengthof(call_only_options));
	ArrayType  *arr;
	Datum		d;

	if (c->args.options == NULL)
		return "";
	for (int i = 0; i < lengthof(call_only_options); i++)
		keys[i] = CStringGetTextDatum(call_only_options[i]);
	arr = construct_array(keys, lengthof(call_only_options), TEXTOID, -1, false, TYPALIGN_INT);
	d = DirectFunctionCall2(jsonb_delete_array, JsonbPGetDatum(c->args.options), PointerGetDatum(arr));
	return JsonbToCString(NULL, &DatumGetJsonbP(d)->root, VARSIZE(DatumGetJsonbP(d)));
}

/* The SHA-256 of what makes the call's answer (see the header) */
static void
cache_key(Call *c)
{
	Generation *g = &c->g;
	const char *parts[16];
	int			lens[16];
	int			n = 0;
	char	   *mt = psprintf("%d", c->opts.gen.max_tokens);
	/* a text's hash and a conversation's can be the same: say which it is */
	const char *vals[8] = {"maester response cache 1", c->args.messages ? "messages" : "text", g->prompt_hash,
		g->prompt_name ? g->prompt_name : "", g->prompt_version ? g->prompt_version : "",
	g->requested_model ? g->requested_model : "", mt, answer_options(c)};

	for (int i = 0; i < lengthof(vals); i++)
	{
		parts[n] = vals[i];
		lens[n++] = strlen(vals[i]);
		parts[n] = "";
		lens[n++] = 1;			/* a zero byte after each part */
	}
	maester_sha256(parts, lens, n, c->cache_key);
}

static bytea *
key_bytea(Call *c)
{
	bytea	   *b = palloc(VARHDRSZ + 32);

	SET_VARSIZE(b, VARHDRSZ + 32);
	memcpy(VARDATA(b), c->cache_key, 32);
	return b;
}

static char *
col_copy(MemoryContext cxt, HeapTuple t, TupleDesc d, int col)
{
	char	   *v = SPI_getvalue(t, d, col);

	return v ? MemoryContextStrdup(cxt, v) : NULL;
}

static int64
col_int8(HeapTuple t, TupleDesc d, int col)
{
	bool		isnull;
	Datum		v = SPI_getbinval(t, d, col, &isnull);

	return isnull ? 0 : DatumGetInt64(v);
}

/*
 * Read the entry of the call's key, if any is live, as the table's owner,
 * in a snapshot of its own: an answer kept earlier in the same statement
 * (SELECT llm_generate(...) FROM generate_series(1, 20)) is a hit too.
 */
static void
lookup_read(Call *c)
{
	OwnerScope	scope;
	Oid			types[2] = {TEXTOID, BYTEAOID};
	Datum		values[2];

	values[0] = CStringGetTextDatum(c->tenant);
	values[1] = PointerGetDatum(key_bytea(c));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	maester_become_owner(maester_table_oid("response_cache"), &scope);
	PG_TRY();
	{
		if (SPI_execute_with_args("SELECT provider, model, content, refusal, tool_calls::pg_catalog.text, parsed, "
								  "finish_reason, provider_finish_reason, response_id, input_tokens, output_tokens, "
								  "cached_input_tokens, cache_write_tokens, reasoning_tokens, cost_usd, evaluation, model_name "
								  "FROM maester.response_cache "
								  "WHERE tenant OPERATOR(pg_catalog.=) $1 AND key OPERATOR(pg_catalog.=) $2 "
								  "AND expires_at OPERATOR(pg_catalog.>) pg_catalog.now()",
								  2, types, values, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read maester.response_cache");
	}
	PG_FINALLY();
	{
		maester_restore_user(&scope);
	}
	PG_END_TRY();
}

/*
 * When the call is prepared: is it cached, and is its answer there?  A
 * hit fills the call's answer (the machine finishes it, respcache_hit);
 * the lookup is a cache_lookup span of the call's trace.
 */
void
respcache_lookup(Call *c)
{
	Generation *g = &c->g;
	Span	   *span;

	c->cache_state = RESPCACHE_OFF;
	if (!c->opts.cache || c->opts.gen.embedding || c->parent != NULL ||
		strcmp(g->purpose, "generation") != 0)
		return;
	span = trace_span_start(g->trace, "cache_lookup");
	if (!c->opts.cache_any_temperature &&
		!(c->opts.gen.has_temperature && c->opts.gen.temperature == 0))
	{
		c->cache_state = RESPCACHE_SKIPPED;
		trace_attr_str(span, "maester.cache", "skipped");
		trace_attr_str(span, "maester.cache.reason",
					   c->opts.gen.has_temperature ? "temperature is not 0" : "no temperature: the provider samples");
		trace_span_end(span, NULL);
		return;
	}
	c->cache_ttl_us = c->opts.cache_ttl_us > 0 ? c->opts.cache_ttl_us :
		(int64) maester_cache_ttl * USECS_PER_SEC;
	cache_key(c);
	lookup_read(c);
	if (SPI_processed == 0)
		c->cache_state = RESPCACHE_MISS;
	else
	{
		HeapTuple	t = SPI_tuptable->vals[0];
		TupleDesc	d = SPI_tuptable->tupdesc;
		MemoryContext cxt = c->cxt;
		bool		isnull;
		Datum		v;

		c->cache_state = RESPCACHE_HIT;
		g->provider = col_copy(cxt, t, d, 1);
		g->model = col_copy(cxt, t, d, 2);
		g->resp.served_model = (char *) g->model;
		g->resp.content = col_copy(cxt, t, d, 3);
		g->resp.refusal = col_copy(cxt, t, d, 4);
		g->resp.tool_calls = col_copy(cxt, t, d, 5);
		v = SPI_getbinval(t, d, 6, &isnull);
		g->resp.parsed = NULL;
		if (!isnull)
		{
			MemoryContext old = MemoryContextSwitchTo(cxt);

			g->resp.parsed = DatumGetJsonbPCopy(v);
			MemoryContextSwitchTo(old);
		}
		g->resp.finish_reason = col_copy(cxt, t, d, 7);
		g->resp.raw_finish_reason = col_copy(cxt, t, d, 8);
		g->resp.response_id = col_copy(cxt, t, d, 9);
		g->resp.input_tokens = col_int8(t, d, 10);
		g->resp.output_tokens = col_int8(t, d, 11);
		g->resp.cached_input_tokens = col_int8(t, d, 12);
		g->resp.cache_write_tokens = col_int8(t, d, 13);
		g->resp.reasoning_tokens = col_int8(t, d, 14);
		g->resp.usage_present = true;
		v = SPI_getbinval(t, d, 15, &isnull);
		{
			MemoryContext old = MemoryContextSwitchTo(cxt);

			c->cache_saved = isnull ? NULL : DatumGetNumericCopy(v);
			v = SPI_getbinval(t, d, 16, &isnull);
			g->evaluation = isnull ? NULL : DatumGetJsonbPCopy(v);
			g->cost = DatumGetNumeric(DirectFunctionCall1(int8_numeric, Int64GetDatum(0)));
			MemoryContextSwitchTo(old);
		}
		g->priced = true;
		c->cache_model_name = col_copy(cxt, t, d, 17);
	}
	SPI_finish();
	trace_attr_str(span, "maester.cache", cache_state_name(c->cache_state));
	if (c->cache_state == RESPCACHE_HIT && c->cache_saved)
		trace_attr_raw(span, "maester.cache.saved_usd",
					   DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(c->cache_saved))));
	trace_span_end(span, NULL);
}

/*
 * A hit, as the machine finishes it (-> DONE): its ledger row (PENDING,
 * then SETTLE: status cached, $0, saved_usd); returns the SETTLE's
 * sequence number.
 */
uint64
respcache_hit(Call *c)
{
	Generation *g = &c->g;
	LedgerRecord *r = palloc(sizeof(LedgerRecord));
	LedgerSlot *slot = c->cs.slot;
	const char *st = g->evaluation ? json_get_string(&g->evaluation->root, "status") : NULL;
	uint64		seq;

	call_record_pending(c, r, 1, "cached", g->provider, g->model, c->cache_model_name);
	r->settled_at = r->ts;
	strlcpy(r->cost, "0", sizeof(r->cost));
	strlcpy(r->cache, "hit", sizeof(r->cache));
	if (c->cache_saved)
		strlcpy(r->saved, DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(c->cache_saved))),
				sizeof(r->saved));
	r->priced = true;
	(void) ledger_enqueue(slot, r);

	r->kind = LEDGER_SETTLE;
	r->has_usage = true;
	r->input_tokens = g->resp.input_tokens;
	r->output_tokens = g->resp.output_tokens;
	r->cached_input_tokens = g->resp.cached_input_tokens;
	r->cache_write_tokens = g->resp.cache_write_tokens;
	r->reasoning_tokens = g->resp.reasoning_tokens;
	r->latency_ms = (double) (GetCurrentTimestamp() - c->started) / 1000.0;
	if (g->resp.finish_reason)
		strlcpy(r->finish_reason, g->resp.finish_reason, sizeof(r->finish_reason));
	if (st)
	{
		JsonbValue *score = json_get(&g->evaluation->root, "score");

		strlcpy(r->eval_status, st, sizeof(r->eval_status));
		if (score && score->type == jbvNumeric)
			r->eval_score = DatumGetFloat8(DirectFunctionCall1(numeric_float8,
															   NumericGetDatum(score->val.numeric)));
	}
	seq = ledger_enqueue(slot, r);
	pfree(r);

	g->attempts = 0;
	g->fallback_used = false;
	c->phase = PHASE_DONE;
	trace_attr_str(&g->trace->spans[0], "maester.cache", "hit");
	return seq;
}

/* Keep the answer (store's body, in a subtransaction of its own) */
static void
store_fn(void *arg)
{
	Call	   *c = (Call *) arg;
	Generation *g = &c->g;
	OwnerScope	scope;
	Oid			types[23] = {TEXTOID, BYTEAOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
		TEXTOID, TEXTOID, TEXTOID, JSONBOID, TEXTOID, TEXTOID, TEXTOID, INT8OID, INT8OID, INT8OID,
	INT8OID, INT8OID, NUMERICOID, JSONBOID, INT8OID, JSONBOID};
	Datum		v[23];
	char		n[23];
	char		rid[UUID_LEN * 2 + 5];

	memset(n, ' ', sizeof(n));
	strlcpy(rid, DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&g->request_id))), sizeof(rid));
#define TEXT_OR_NULL(i, s) do { if (s) v[i] = CStringGetTextDatum(s); else n[i] = 'n'; } while (0)
	v[0] = CStringGetTextDatum(c->tenant);
	v[1] = PointerGetDatum(key_bytea(c));
	TEXT_OR_NULL(2, g->requested_model);
	TEXT_OR_NULL(3, g->prompt_name);
	TEXT_OR_NULL(4, g->prompt_version);
	TEXT_OR_NULL(5, g->provider);
	TEXT_OR_NULL(6, g->model);
	v[7] = CStringGetTextDatum(c->plan->targets[c->ti].name);
	TEXT_OR_NULL(8, g->resp.content);
	TEXT_OR_NULL(9, g->resp.refusal);
	if (g->resp.tool_calls)
		v[10] = DirectFunctionCall1(jsonb_in, CStringGetDatum(g->resp.tool_calls));
	else
		n[10] = 'n';
	TEXT_OR_NULL(11, g->resp.finish_reason);
	TEXT_OR_NULL(12, g->resp.raw_finish_reason);
	TEXT_OR_NULL(13, g->resp.response_id);
	v[14] = Int64GetDatum(g->resp.input_tokens);
	v[15] = Int64GetDatum(g->resp.output_tokens);
	v[16] = Int64GetDatum(g->resp.cached_input_tokens);
	v[17] = Int64GetDatum(g->resp.cache_write_tokens);
	v[18] = Int64GetDatum(g->resp.reasoning_tokens);
	if (g->cost)
		v[19] = NumericGetDatum(g->cost);
	else
		n[19] = 'n';
	if (g->evaluation)
		v[20] = JsonbPGetDatum(g->evaluation);
	else
		n[20] = 'n';
	v[21] = Int64GetDatum(c->cache_ttl_us);
	if (g->resp.parsed)
		v[22] = JsonbPGetDatum(g->resp.parsed);
	else
		n[22] = 'n';
#undef TEXT_OR_NULL
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	maester_become_owner(maester_table_oid("response_cache"), &scope);
	if (SPI_execute_with_args(psprintf("INSERT INTO maester.response_cache AS e (tenant, key, requested_model, prompt_name, "
									   "prompt_version, provider, model, model_name, content, refusal, tool_calls, "
									   "finish_reason, provider_finish_reason, response_id, input_tokens, output_tokens, "
									   "cached_input_tokens, cache_write_tokens, reasoning_tokens, cost_usd, evaluation, "
									   "source_request_id, expires_at, parsed) "
									   "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, "
									   "$18, $19, $20, $21, '%s', pg_catalog.now() OPERATOR(pg_catalog.+) "
									   "pg_catalog.make_interval(secs => $22 OPERATOR(pg_catalog./) 1000000.0), $23) "
									   "ON CONFLICT (tenant, key) DO UPDATE SET requested_model = EXCLUDED.requested_model, "
									   "prompt_name = EXCLUDED.prompt_name, prompt_version = EXCLUDED.prompt_version, "
									   "provider = EXCLUDED.provider, model = EXCLUDED.model, model_name = EXCLUDED.model_name, "
									   "content = EXCLUDED.content, refusal = EXCLUDED.refusal, tool_calls = EXCLUDED.tool_calls, "
									   "parsed = EXCLUDED.parsed, "
									   "finish_reason = EXCLUDED.finish_reason, provider_finish_reason = EXCLUDED.provider_finish_reason, "
									   "response_id = EXCLUDED.response_id, input_tokens = EXCLUDED.input_tokens, "
									   "output_tokens = EXCLUDED.output_tokens, cached_input_tokens = EXCLUDED.cached_input_tokens, "
									   "cache_write_tokens = EXCLUDED.cache_write_tokens, reasoning_tokens = EXCLUDED.reasoning_tokens, "
									   "cost_usd = EXCLUDED.cost_usd, evaluation = EXCLUDED.evaluation, "
									   "source_request_id = EXCLUDED.source_request_id, created_at = EXCLUDED.created_at, "
									   "expires_at = EXCLUDED.expires_at "
									   "WHERE e.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()", rid),
							  23, types, v, n, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not write maester.response_cache");
	maester_restore_user(&scope);
	SPI_finish();
}

/*
 * A miss that succeeded: keep its answer, unless its evaluation did not
 * pass (failed, or could not be made) or a downgrade budget sent it to
 * another model.  Never the call's error: a cache that cannot be written
 * is a WARNING.
 */
void
respcache_store(Call *c)
{
	const char *st;
	ErrorData  *edata;

	/* a budget's downgrade answered with another model than the key names */
	if (c->cache_state != RESPCACHE_MISS || c->g.provider == NULL || c->cs.downgraded)
		return;
	st = c->g.evaluation ? json_get_string(&c->g.evaluation->root, "status") : NULL;
	if (st && strcmp(st, "pass") != 0)
		return;
	edata = maester_subxact(store_fn, c, CurrentMemoryContext);
	if (edata != NULL)
	{
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
			ReThrowError(edata);
		ereport(WARNING,
				(errmsg("the answer was not kept in the response cache: %s", edata->message)));
	}
}

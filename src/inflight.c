/*-------------------------------------------------------------------------
 *
 * inflight.c
 *	  The ledger records of a call's attempts, and the attempts in flight.
 *
 * Every attempt is two ledger records (ledger.c queues them, the ledger
 * worker writes them): PENDING, durable before the request leaves, with
 * the worst-case cost (a token per byte of the prompt, plus max_tokens);
 * and SETTLE, with what happened -- tokens, exact cost, error class, the
 * evaluation of the output.  Between the two, the attempt is in flight: it
 * is on a list in TopMemoryContext, so that whatever ends it early -- an
 * error, a cancel, a batch torn down, pg_terminate_backend (which does not
 * unwind through PG_CATCH; the exit callback then runs) -- settles it as
 * cancelled: at what it cost if the provider had answered, at its
 * estimate if the request may have left (it may be billed), else at zero.
 * Its budget reservation is settled the same way.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "inflight.h"
#include "jsonutil.h"
#include "meter.h"
#include "settings.h"
#include "stat.h"

static dlist_head InFlightAttempts = DLIST_STATIC_INIT(InFlightAttempts);
static bool ExitCallbackRegistered = false;

/* Register an attempt whose PENDING row `r` was just queued */
InFlight *
inflight_add(LedgerSlot *slot, LedgerRecord *r, BudgetHold *hold)
{
	InFlight   *f = MemoryContextAlloc(TopMemoryContext, sizeof(InFlight));

	f->slot = slot;
	f->hold = *hold;
	f->sent = false;
	f->answered = false;
	memcpy(&f->rec, r, sizeof(LedgerRecord));
	dlist_push_tail(&InFlightAttempts, &f->node);
	return f;
}

/*
 * The provider answered the attempt: its SETTLE record `r` has the usage,
 * and `actual` (NULL: unpriced) is what it cost, which settles its budget
 * reservation now.  The call may go on (its output is being graded); torn
 * down meanwhile, the attempt is settled with what it really cost rather
 * than its estimate.
 */
void
inflight_answered(InFlight *f, const LedgerRecord *r, Numeric actual)
{
	memcpy(&f->rec, r, sizeof(LedgerRecord));
	f->answered = true;
	budget_settle(&f->hold, actual);
}

/* Its SETTLE row is queued: forget it */
void
inflight_done(InFlight *f)
{
	dlist_delete(&f->node);
	pfree(f);
}

/*
 * Settle an attempt that will not finish (an error, a cancel, the end of
 * the backend) as cancelled: charged what it cost if the provider had
 * answered, else at its estimate if the request may have left, else at
 * zero; its budget reservation is settled the same way.  Does not wait and
 * does not throw (a full queue loses the row; the worker's recovery then
 * settles the PENDING row as an orphan).
 */
void
inflight_cancel(InFlight *f, const char *error_class)
{
	LedgerRecord *r = &f->rec;

	r->kind = LEDGER_SETTLE;
	strlcpy(r->status, "cancelled", sizeof(r->status));
	strlcpy(r->error_class, error_class, sizeof(r->error_class));
	r->eval_status[0] = '\0';
	if (f->answered)
		;						/* its usage and exact cost */
	else if (f->sent)
		r->cost[0] = '\0';		/* keep the estimate */
	else
		strlcpy(r->cost, "0", sizeof(r->cost));
	if (!f->answered)
		r->settled_at = GetCurrentTimestamp();
	(void) ledger_try_enqueue(f->slot, r);
	if (f->answered)
		;						/* settled by inflight_answered */
	else if (f->sent)
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
inflight_backend_exit(int code, Datum arg)
{
	dlist_mutable_iter it;

	dlist_foreach_modify(it, &InFlightAttempts)
		inflight_cancel(dlist_container(InFlight, node, it.cur), "terminated");
}

/* Register the exit callback, once per process */
void
inflight_register_exit(void)
{
	if (!ExitCallbackRegistered)
	{
		before_shmem_exit(inflight_backend_exit, (Datum) 0);
		ExitCallbackRegistered = true;
	}
}

/* Estimate tokens of a text: about four characters a token */
int64
estimate_tokens(const char *s)
{
	return s ? (pg_mbstrlen(s) + 3) / 4 : 0;
}

/* An answer's usage into its ledger record */
static void
record_usage(LedgerRecord *r, const GenResponse *resp)
{
	r->has_usage = true;
	r->input_tokens = resp->input_tokens;
	r->output_tokens = resp->output_tokens;
	r->cached_input_tokens = resp->cached_input_tokens;
	r->cache_write_tokens = resp->cache_write_tokens;
	r->cache_write_1h_tokens = resp->cache_write_1h_tokens;
	r->reasoning_tokens = resp->reasoning_tokens;
	if (resp->service_tier)
		ledger_copy_name(r->service_tier, resp->service_tier, sizeof(r->service_tier));
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

/*
 * The output tokens an attempt on `t` asks for, and so reserves: the
 * caller's max_tokens, else the kind's default (Anthropic's 1,024, else
 * 4,096), never more than the model's output limit.  It is always sent, so
 * that the reservation bounds what an honest provider can bill.
 */
int
target_max_tokens(const RouteTarget *t, int asked)
{
	if (asked > 0)
		return asked;
	return Min(PROVIDER_MAX_TOKENS(t->provider, 0), target_output_limit(t));
}

/* The most output tokens `t` may be asked for: its model's, or the setting's */
int
target_output_limit(const RouteTarget *t)
{
	return t->max_output_tokens > 0 ? t->max_output_tokens : maester_max_output_tokens;
}

/*
 * The cost of the usage an attempt on `t` reported, at the prices of the
 * names the call may be priced as, most specific first (meter.c).
 */
static Numeric
attempt_cost(Call *c, RouteTarget *t, TimestampTz ts, bool *priced)
{
	Generation *g = &c->g;
	const char *names[4] = {g->resp.served_model ? g->resp.served_model : t->model,
		t->model, t->name, g->requested_model};

	return maester_cost(names, lengthof(names),
						g->resp.input_tokens, g->resp.output_tokens,
						g->resp.cached_input_tokens, g->resp.cache_write_tokens,
						g->resp.cache_write_1h_tokens, ts, priced);
}

/*
 * The worst case of an attempt of `c` on `t` sending max_tokens `out`:
 * every input token (a token per byte) at the input rate -- or, for a
 * call that writes the prompt cache, at the write rate -- and `out`
 * output tokens.  NULL (and *priced false) when `t` has no price.
 */
static Numeric
attempt_worst_cost(Call *c, RouteTarget *t, int out, TimestampTz ts, bool *priced)
{
	const char *names[3] = {t->model, t->name, c->g.requested_model};
	int64		writes = c->opts.gen.cache_at != CACHE_NONE ? c->cs.est_input_tokens : 0;

	return maester_cost(names, lengthof(names), c->cs.est_input_tokens, out, 0, writes,
						c->opts.gen.cache_1h ? writes : 0, ts, priced);
}

/*
 * The most the first attempt of prepared call `c` may cost, over every
 * target it may be sent to (its fallbacks too): NULL when one has no
 * price.  *identity is its first target's identity (budgets' model).
 */
Numeric
call_worst_cost(Call *c, const char **identity)
{
	TimestampTz now = GetCurrentTimestamp();
	Numeric		worst = NULL;

	*identity = c->ntargets > 0 ? c->plan->targets[0].name : NULL;
	for (int i = 0; i < c->ntargets; i++)
	{
		RouteTarget *t = &c->plan->targets[i];
		bool		priced;
		Numeric		cost;

		cost = attempt_worst_cost(c, t, c->opts.gen.embedding ? 0 : target_max_tokens(t, c->opts.gen.max_tokens),
								  now, &priced);
		if (!priced)
			return NULL;
		if (worst == NULL || DatumGetBool(DirectFunctionCall2(numeric_gt, NumericGetDatum(cost),
															  NumericGetDatum(worst))))
			worst = cost;
	}
	return worst;
}

/* A call's RESPCACHE_* state as the ledger and the trace name it */
const char *
cache_state_name(int state)
{
	switch (state)
	{
		case RESPCACHE_SKIPPED:
			return "skipped";
		case RESPCACHE_MISS:
			return "miss";
		case RESPCACHE_HIT:
			return "hit";
	}
	return "";
}

/*
 * A PENDING record of call `c` answered by `provider` and `model`
 * (`model_name` its identity): what every row of the call says of it --
 * who, which trace, which prompt, why this route, the cache -- at attempt
 * `attempt`, status `status`.
 */
void
call_record_pending(Call *c, LedgerRecord *r, int attempt, const char *status,
					const char *provider, const char *model, const char *model_name)
{
	Generation *g = &c->g;

	memset(r, 0, sizeof(*r));
	r->kind = LEDGER_PENDING;
	r->request_id = g->request_id;
	r->attempt = attempt;
	r->ts = GetCurrentTimestamp();
	ledger_copy_name(r->tenant, c->tenant, sizeof(r->tenant));
	ledger_copy_name(r->role, GetUserNameFromId(GetUserId(), false), sizeof(r->role));
	strlcpy(r->trace_id, g->trace_id, sizeof(r->trace_id));
	strlcpy(r->prompt_hash, g->prompt_hash, sizeof(r->prompt_hash));
	ledger_copy_name(r->prompt_name, g->prompt_name, sizeof(r->prompt_name));
	ledger_copy_name(r->prompt_version, g->prompt_version, sizeof(r->prompt_version));
	ledger_copy_name(r->provider, provider, sizeof(r->provider));
	ledger_copy_name(r->requested_model, g->requested_model, sizeof(r->requested_model));
	ledger_copy_name(r->model, model, sizeof(r->model));
	ledger_copy_name(r->model_name, model_name, sizeof(r->model_name));
	strlcpy(r->status, status, sizeof(r->status));
	strlcpy(r->purpose, g->purpose, sizeof(r->purpose));
	if (g->tags)
		strlcpy(r->tags, g->tags, sizeof(r->tags));
	if (c->cache_state != RESPCACHE_OFF)
		strlcpy(r->cache, cache_state_name(c->cache_state), sizeof(r->cache));
	if (g->route_strategy)
	{
		strlcpy(r->route_strategy, g->route_strategy, sizeof(r->route_strategy));
		ledger_copy_name(r->route_reason, g->route_reason ? g->route_reason : "", sizeof(r->route_reason));
	}
}

/* Fill the PENDING record of an attempt; returns the estimate (or NULL) */
Numeric
attempt_record_pending(Call *c, RouteTarget *t, LedgerRecord *r)
{
	int			max_tokens = c->opts.gen.max_tokens;
	Numeric		estimate;
	bool		priced;

	call_record_pending(c, r, c->g.attempts, "pending", t->provider->name, t->model, t->name);
	/* what the request sends (target_max_tokens) */
	r->max_tokens = c->opts.gen.embedding ? 0 : target_max_tokens(t, max_tokens);
	estimate = attempt_worst_cost(c, t, r->max_tokens, r->ts, &priced);
	numeric_to_field(estimate, r->estimate, sizeof(r->estimate));
	r->priced = priced;
	return estimate;
}

/*
 * A settlement above its reservation: the provider reported more tokens
 * than the prompt's bytes and max_tokens allow (a broken or dishonest
 * provider; an honest one cannot, test/bench/tokens.sh).  Budgets count
 * what was billed; the ledger row carries overrun_usd (the worker computes
 * it), and the caller gets a WARNING and the log a LOG line to alert on.
 */
void
attempt_warn_overrun(Call *c, RouteTarget *t, Numeric reserved, Numeric billed,
					 int max_tokens)
{
	char	   *b;
	char	   *r;
	char		id[UUID_LEN * 2 + 5];

	if (reserved == NULL || billed == NULL ||
		!DatumGetBool(DirectFunctionCall2(numeric_gt, NumericGetDatum(billed),
										  NumericGetDatum(reserved))))
		return;
	b = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(billed)));
	r = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(reserved)));
	strlcpy(id, DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&c->g.request_id))),
			sizeof(id));
	ereport(LOG,
			(errmsg("maester: budget overrun request_id=%s tenant=%s provider=%s model=%s billed_usd=%s reserved_usd=%s input_tokens=" INT64_FORMAT " output_tokens=" INT64_FORMAT,
					id, c->tenant, t->provider->name, t->model, b, r,
					c->g.resp.input_tokens, c->g.resp.output_tokens),
			 errhidestmt(true)));
	ereport(WARNING,
			(errcode(ERRCODE_MAESTER_BAD_RESPONSE),
			 errmsg("provider \"%s\" billed %s USD for a call reserved at %s USD, its worst case",
					t->provider->name, b, r),
			 errdetail("It reported " INT64_FORMAT " input and " INT64_FORMAT " output tokens for a prompt of at most " INT64_FORMAT " tokens and max_tokens %d.",
					   c->g.resp.input_tokens, c->g.resp.output_tokens,
					   c->cs.est_input_tokens, max_tokens),
			 errhint("Budgets count what was billed; the ledger row's overrun_usd and maester.budget_status show the overrun.")));
}

/* A blocked attempt leaves a durable 'blocked' row (nothing was sent) */
void
attempt_record_blocked(LedgerSlot *slot, LedgerRecord *r)
{
	uint64		seq;

	strlcpy(r->status, "blocked", sizeof(r->status));
	strlcpy(r->error_class, "budget", sizeof(r->error_class));
	strlcpy(r->cost, "0", sizeof(r->cost));
	seq = ledger_enqueue(slot, r);
	(void) ledger_wait_durable(slot, seq, false);
}

/*
 * Fill the SETTLE record of an attempt that returned (ok or not): tokens,
 * exact cost, error class; and its spans and statistics.  (The evaluation
 * of a successful attempt's output comes later: attempt_record_evaluation.)
 */
void
attempt_record_outcome(Call *c, RouteTarget *t, const Failure *f,
					   LedgerRecord *r, bool ok)
{
	Generation *g = &c->g;
	const GenRequest *gen = &c->opts.gen;
	Span	   *gen_span = c->gen_span;
	Span	   *span;

	if (c->attempt_start == 0)
		c->attempt_start = GetCurrentTimestamp();
	g->last_provider = t->provider->name;
	g->last_model = t->model;
	r->kind = LEDGER_SETTLE;
	r->settled_at = GetCurrentTimestamp();
	if (g->resp.provider_request_id)
		strlcpy(r->provider_request_id, g->resp.provider_request_id,
				sizeof(r->provider_request_id));
	r->latency_ms = (double) (r->settled_at - c->attempt_start) / 1000.0;
	if (ok)
	{
		if (!g->resp.usage_present)
		{
			/* no usage from the provider: estimate it, and say so */
			g->resp.input_tokens = (gen->input_chars + 3) / 4;
			g->resp.output_tokens = estimate_tokens(g->resp.content);
			g->resp.cached_input_tokens = g->resp.cache_write_tokens = 0;
		}
		trace_attr_num(gen_span, "http.response.status_code", 200);
		trace_attr_str(gen_span, "gen_ai.response.model", g->resp.served_model);
		trace_attr_str(gen_span, "gen_ai.response.id", g->resp.response_id);
		trace_attr_num(gen_span, "gen_ai.usage.input_tokens", g->resp.input_tokens);
		trace_attr_num(gen_span, "gen_ai.usage.output_tokens", g->resp.output_tokens);
		if (g->resp.raw_finish_reason)
		{
			StringInfoData fr;

			initStringInfo(&fr);
			appendStringInfoChar(&fr, '[');
			escape_json(&fr, g->resp.raw_finish_reason);
			appendStringInfoChar(&fr, ']');
			trace_attr_raw(gen_span, "gen_ai.response.finish_reasons", fr.data);
		}
		span = trace_span_start(g->trace, "cost_metering");
		g->cost = attempt_cost(c, t, r->ts, &g->priced);
		if (g->cost)
			trace_attr_raw(span, "maester.cost_usd",
						   DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(g->cost))));
		trace_span_end(span, g->priced ? "ok" : "unpriced");
		strlcpy(r->status, "ok", sizeof(r->status));
		if (g->resp.served_model)
			ledger_copy_name(r->model, g->resp.served_model, sizeof(r->model));
		record_usage(r, &g->resp);
		r->usage_estimated = !g->resp.usage_present;
		r->priced = g->priced;
		r->fallback_used = g->fallback_used;
		r->http_status = 200;
		numeric_to_field(g->cost, r->cost, sizeof(r->cost));
		if (g->resp.finish_reason)
			strlcpy(r->finish_reason, g->resp.finish_reason, sizeof(r->finish_reason));
		if (g->resp.raw_finish_reason)
			ledger_copy_name(r->provider_finish_reason, g->resp.raw_finish_reason,
							 sizeof(r->provider_finish_reason));
	}
	else
	{
		/* a timeout may have been billed: keep the estimate; else nothing */
		bool		maybe_billed = strcmp(f->error_class, "timeout") == 0 ||
			strcmp(f->error_class, "network") == 0;

		strlcpy(r->status, strcmp(f->error_class, "timeout") == 0 ? "timeout" : "error",
				sizeof(r->status));
		strlcpy(r->error_class, f->error_class, sizeof(r->error_class));
		if (f->billed)
		{
			/* unusable but billed: charged at the usage it reported */
			g->cost = attempt_cost(c, t, r->ts, &g->priced);
			record_usage(r, &g->resp);
			r->priced = g->priced;
			numeric_to_field(g->cost, r->cost, sizeof(r->cost));
		}
		else if (!maybe_billed)
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
 * The evaluation of a successful attempt's output (g->evaluation) on its
 * SETTLE record and its evaluation span, which it ends.
 */
void
attempt_record_evaluation(Call *c, LedgerRecord *r)
{
	Jsonb	   *ev = c->g.evaluation;
	char	   *st;
	JsonbValue *sc;

	if (ev == NULL)
		return;					/* not evaluated (an embedding) */
	st = json_get_string(&ev->root, "status");
	sc = json_get(&ev->root, "reliability_score");

	strlcpy(r->eval_status, st ? st : "error", sizeof(r->eval_status));
	r->eval_score = sc && sc->type == jbvNumeric ?
		DatumGetFloat8(DirectFunctionCall1(numeric_float8, NumericGetDatum(sc->val.numeric))) : 0;
	if (c->eval_span)
	{
		trace_attr_str(c->eval_span, "maester.evaluation.status", r->eval_status);
		trace_attr_num(c->eval_span, "maester.evaluation.score", r->eval_score);
		trace_span_end(c->eval_span, strcmp(r->eval_status, "error") == 0 ? "error" : "ok");
		c->eval_span = NULL;
	}
}

/*
 * Leave out of the request what the target's model refuses (a 400 that
 * would end the target, and with it a fallback route's chance): the
 * sampling parameters of maester.model.unsupported_params, else of the
 * rule (router.c).  What was left out is on the span.
 */
void
target_drop_refused(const RouteTarget *t, GenRequest *gen, Span *span)
{
	StringInfoData dropped;

	initStringInfo(&dropped);
	if (gen->has_temperature && (t->refuses & MODEL_NO_TEMPERATURE))
	{
		gen->has_temperature = false;
		appendStringInfoString(&dropped, "temperature");
	}
	if (gen->has_top_p && ((t->refuses & MODEL_NO_TOP_P) ||
						   ((t->refuses & MODEL_TEMPERATURE_XOR_TOP_P) && gen->has_temperature)))
	{
		gen->has_top_p = false;
		appendStringInfo(&dropped, "%stop_p", dropped.len ? "," : "");
	}
	if (gen->stop != NIL && (t->refuses & MODEL_NO_STOP))
	{
		gen->stop = NIL;
		appendStringInfo(&dropped, "%sstop", dropped.len ? "," : "");
	}
	/* a temperature above what the kind takes (Anthropic: 1) is its most */
	if (gen->has_temperature && t->provider->ops->max_temperature > 0 &&
		gen->temperature > t->provider->ops->max_temperature)
	{
		gen->temperature = t->provider->ops->max_temperature;
		trace_attr_num(span, "maester.request.temperature_clamped", gen->temperature);
	}
	if (dropped.len > 0)
		trace_attr_str(span, "maester.request.dropped_params", dropped.data);
}

/*-------------------------------------------------------------------------
 *
 * machine.c
 *	  The call machine: the phases of a call, and the driver that keeps
 *	  many calls moving on the backend's one curl multi handle.
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
 *	 SENT	  when curl has finished it: classify and meter; on success,
 *			  evaluate the output (-> GRADING when its checks need grading
 *			  calls); queue the SETTLE row; then DONE, or BACKOFF before a
 *			  retry, or the next TARGET, or FAILED;
 *	 GRADING  the output's llm_rubric checks are calls of their own (see
 *			  call.c), moved by the same driver beside the other calls;
 *			  once they all answered: the evaluation, SETTLE, DONE;
 *	 PACED, BACKOFF  wait until wake_at, then ATTEMPT.
 *
 * Every attempt is a ledger row and a span, exactly as for a single call.
 * Before run_calls returns, it waits (once) for the SETTLE rows it queued
 * to be durable.  When an error or a cancel escapes, every unfinished call
 * is torn down: its transfer is removed (curl closes the connection), its
 * in-flight attempt settled as cancelled (at its estimate if it may have
 * been sent), its budget reservation and circuit probe released, its spans
 * queued.  With CALLS_SUBXACT (generate_batch), an error raised while one call
 * moves (a bad request, a refused egress, a blocked budget) ends that call
 * only: each move runs in a subtransaction, and only cancel and shutdown
 * go through to the whole batch.
 *
 * Grading calls do not count against the driver's concurrency (a graded
 * call waits for its grading calls: counted, they could take every place
 * and wait for each other forever); they are torn down with the call they
 * grade, and never handed to the driver.
 *
 * Retries: 429, 500, 502, 503, 504, 529, connection failures and
 * timeouts are retried after exponential backoff with jitter, or after the
 * provider's Retry-After when it gave one (up to maester.retry_after_max_ms;
 * longer than that, the call falls back instead of waiting).  Other
 * failures move on to the next target at once.  An overall deadline
 * (options.timeout_ms, else maester.request_timeout_ms) bounds everything,
 * backoff included.  When every target failed, the error's SQLSTATE is that
 * of the last failure (class MG) and its detail lists every attempt.
 *
 * Waiting -- on the network and between attempts -- is always on the
 * latch, with CHECK_FOR_INTERRUPTS() at each wake-up, so cancel,
 * statement_timeout and termination act at once.  Keys are fetched per
 * attempt, put only into a curl header list, and wiped afterwards.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "common/pg_prng.h"
#include "miscadmin.h"
#include "postmaster/interrupt.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "budget.h"
#include "call.h"
#include "circuit.h"
#include "http.h"
#include "inflight.h"
#include "ledger.h"
#include "maester.h"
#include "provider.h"
#include "respcache.h"
#include "router.h"
#include "secrets.h"
#include "settings.h"
#include "trace.h"
#include "util.h"

/* Backoff before retry `attempt_no` (1-based) of provider `p` */
static double
backoff_ms(ProviderConf *p, int attempt_no)
{
	double		d = (double) p->backoff_base_ms * pow(2.0, attempt_no - 1);

	d = Min(d, (double) p->backoff_max_ms);
	/* equal jitter: half fixed, half random */
	return d / 2 + pg_prng_double(&pg_global_prng_state) * d / 2;
}

/* What a budget's on_block callback needs */
typedef struct BlockArg
{
	LedgerSlot *slot;
	LedgerRecord *r;
} BlockArg;

static void
write_blocked_row(void *arg)
{
	BlockArg   *ba = (BlockArg *) arg;

	attempt_record_blocked(ba->slot, ba->r);
}

/* The calls run_calls is moving */
typedef struct CallSet
{
	Call	  **calls;
	int			ncalls;
	int			size;			/* of calls[] */
	int			nroots;			/* calls that are not grading calls */
	int			ngraders;		/* grading calls in the set */
	int			max;			/* the driver's concurrency, for each kind */
	Call	  **waiting;		/* grading calls waiting for room */
	int			nwaiting;
	int			waiting_size;
	uint64		settle_seq;		/* highest SETTLE row queued */
	LedgerSlot *slot;
	CallDriver *driver;
	MemoryContext roundcxt;		/* reset at each round */
} CallSet;

/* The key of the current target, or NULL with *missing set */
static char *
call_key(Call *c, char **missing)
{
	ProviderConf *p = c->plan->targets[c->ti].provider;

	*missing = NULL;
	return maester_provider_key(p->name, p->api_key_env, p->api_key_file,
								provider_url(p), missing);
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
		if (c->opts.gen.embedding && t->provider->ops->embed_path == NULL)
		{
			call_fail_with(c, t->provider->name, "unsupported", ERRCODE_FEATURE_NOT_SUPPORTED,
						   psprintf("provider \"%s\" (%s) has no embeddings", t->provider->name,
									t->provider->ops->kind));
			continue;
		}
		if (c->opts.gen.max_tokens > target_output_limit(t))
		{
			call_fail_with(c, t->provider->name, "max_tokens", ERRCODE_INVALID_PARAMETER_VALUE,
						   psprintf("max_tokens %d is more than model \"%s\" may be asked for (%d, %s)",
									c->opts.gen.max_tokens, t->name, target_output_limit(t),
									t->max_output_tokens > 0 ? "maester.model.max_output_tokens" : "maester.max_output_tokens"));
			continue;
		}
		key = call_key(c, &missing);
		if (missing)
		{
			c->cs.nkeyless++;
			call_fail_with(c, t->provider->name, "no_api_key",
						   ERRCODE_MAESTER_NO_KEY,
						   psprintf("API key of provider \"%s\" is not set: %s",
									t->provider->name, missing));
			continue;
		}
		maester_forget_key(key);
		c->tries = 0;
		c->paced = c->tenant_paced = false;
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
	c->paced = c->tenant_paced = false;
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
	LedgerRecord *r;

	if (now >= cs->deadline)
	{
		call_fail_with(c, p->name, "timeout", ERRCODE_MAESTER_TIMEOUT,
					   psprintf("the call's deadline of %d ms passed", c->opts.timeout_ms));
		call_fail(c);
		return;
	}

	/*
	 * Rate limits: the tenant's (maester.tenant_limit), then the
	 * provider's; wait for each turn in that order, so that a tenant
	 * waiting for its own turn holds no place in the provider's schedule
	 * (which would delay other tenants).  The waits do not count against
	 * the deadline, but may not be longer than it: a turn further away is
	 * not taken, and the call (tenant) or the target (provider) fails.
	 */
	if (!c->paced)
	{
		int			max_tokens = c->opts.gen.embedding ? 0 :
			target_max_tokens(t, c->opts.gen.max_tokens);
		int64		tokens = (c->opts.gen.input_chars + 3) / 4 + max_tokens;
		TimestampTz turn;

		if (!c->tenant_paced)
		{
			int			rpm;
			int			tpm;

			router_tenant_limits(c->tenant, &rpm, &tpm);
			if (!tenant_rate_reserve(c->tenant, rpm, tpm, tokens,
									 (int64) c->opts.timeout_ms * 1000, &turn))
			{
				call_fail_with(c, p->name, "tenant_rate_limited", ERRCODE_MAESTER_UNAVAILABLE,
							   turn == DT_NOEND ?
							   psprintf("tenant \"%s\"'s rate limit cannot be kept: maester.max_providers has no room left",
										c->tenant) :
							   psprintf("tenant \"%s\"'s rate limit (maester.tenant_limit) would delay the call by more than its timeout of %d ms",
										c->tenant, c->opts.timeout_ms));
				call_fail(c);
				return;
			}
			c->tenant_paced = true;
			if (turn > now)
			{
				c->wake_at = turn;
				c->paced_since = now;
				c->phase = PHASE_PACED;
				return;
			}
		}
		if (!rate_reserve(p, tokens, (int64) c->opts.timeout_ms * 1000, &turn))
		{
			call_fail_with(c, p->name, "rate_limited", ERRCODE_MAESTER_UNAVAILABLE,
						   turn == DT_NOEND ?
						   psprintf("provider \"%s\"'s rate limit cannot be kept: maester.max_providers has no room left",
									p->name) :
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

	admit = circuit_admit(p, t->model);
	if (admit == CIRCUIT_SKIP)
	{
		call_fail_with(c, p->name, "circuit_open", ERRCODE_MAESTER_UNAVAILABLE,
					   psprintf("model \"%s\" of provider \"%s\" is failing: its circuit breaker is open",
								t->model, p->name));
		next_target(c);
		return;
	}
	c->probe = admit == CIRCUIT_ADMIT_PROBE;

	/* refuse a URL our egress policy forbids before anything is queued */
	provider_check_egress(p);

	c->opts.gen.model = t->model;
	c->opts.gen.native_schema = t->native_schema;
	c->opts.gen.max_tokens_name = t->output_limit_param;
	c->tries++;
	c->g.attempts++;
	c->g.fallback_used = c->ti > 0 || cs->downgraded;

	r = palloc(sizeof(LedgerRecord));
	c->attempt_start = 0;
	c->estimate = attempt_record_pending(c, t, r);

	/* budgets: reserve the worst case, or block (MB001), or downgrade */
	ba.slot = cs->slot;
	ba.r = r;
	span = trace_span_start(c->g.trace, "budget_check");
	if (c->estimate)
		trace_attr_raw(span, "maester.estimated_cost_usd",
					   DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(c->estimate))));
	verdict = budget_reserve(r->tenant, c->g.prompt_name, t->name, c->estimate, &hold,
							 &downgrade, write_blocked_row, &ba);
	trace_span_end(span, NULL);
	if (verdict == BUDGET_DOWNGRADE)
	{
		trace_attr_str(span, "maester.budget.downgrade_to", downgrade);
		pfree(r);
		if (c->probe)
			circuit_release_probe(p, t->model);
		c->probe = false;
		if (cs->downgraded)
		{
			Failure		f;

			memset(&f, 0, sizeof(f));
			f.error_class = "budget";
			f.sqlstate = ERRCODE_MAESTER_BUDGET_EXCEEDED;
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
		route_strategy_apply(c, NULL);	/* a route downgraded to has its strategy too */
		c->ntargets = c->opts.fallback ? c->plan->ntargets : Min(c->plan->ntargets, 1);
		cs->downgraded = true;
		c->g.fallback_used = true;
		c->ti = 0;
		c->paced = c->tenant_paced = false;
		c->phase = PHASE_TARGET;
		return;
	}

	/* from the PENDING row on, the attempt is in flight */
	c->pending_seq = enqueue_pending(cs->slot, r, &hold);
	c->inflight = inflight_add(cs->slot, r, &hold);
	c->rec = r;
	c->pending_at = GetCurrentTimestamp();
	c->phase = PHASE_DURABLE;
}

static void attempt_end(Call *c, CallSet *set, bool ok, Failure *f, bool sent);

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

/* DURABLE: PENDING is durable; send */
static void
phase_send(Call *c, CallSet *set)
{
	RouteTarget *t = &c->plan->targets[c->ti];
	ProviderConf *p = t->provider;
	GenRequest	sendgen = c->opts.gen;
	GenRequest *gen = &sendgen;
	Span	   *span;
	char	   *missing;
	long		remaining = (long) ((c->cs.deadline - GetCurrentTimestamp()) / 1000);

	/* ask for no more than was reserved (target_max_tokens) */
	sendgen.max_tokens = c->rec->max_tokens;
	span = trace_span_start(c->g.trace, gen->embedding ? "model_embed" : "model_generate");
	if (!gen->embedding)
		target_drop_refused(t, &sendgen, span);
	else
		trace_attr_num(span, "maester.embedding.inputs", list_length(gen->inputs));
	c->gen_span = span;
	trace_attr_str(span, "gen_ai.operation.name", gen->embedding ? "embeddings" : "chat");
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
				(errcode(ERRCODE_MAESTER_NO_KEY),
				 errmsg("API key of provider \"%s\" is not set: %s", p->name, missing)));
	c->req_live = true;
	c->deadline_bound = remaining < (long) p->timeout_ms;
	provider_request(p, gen, c->key, &c->g.request_id, c->g.traceparent,
					 Max(Min((long) p->timeout_ms, remaining), 1L), &c->req);
	c->attempt_start = GetCurrentTimestamp();
	http_submit(&c->req);
	/* from here on the request may have left (and may be billed) */
	c->inflight->sent = true;
	c->phase = PHASE_SENT;
}

/*
 * DURABLE, but the worker could not write the PENDING row (it is in
 * maester.dead_letter): nothing may leave unrecorded, so the call fails.
 */
static void
phase_unrecorded(Call *c, CallSet *set)
{
	Failure		f;

	memset(&f, 0, sizeof(f));
	f.error_class = "ledger";
	f.sqlstate = ERRCODE_MAESTER_LEDGER_UNAVAILABLE;
	f.fatal = true;
	f.retry_after_ms = -1;
	f.message = pstrdup("the usage ledger could not record this call");
	f.detail = pstrdup("The ledger row was refused (see maester.dead_letter and the server log); nothing was sent.");
	c->gen_span = trace_span_start(c->g.trace, "model_generate");
	trace_attr_str(c->gen_span, "gen_ai.provider.name", c->plan->targets[c->ti].provider->name);
	trace_attr_str(c->gen_span, "gen_ai.request.model", c->plan->targets[c->ti].model);
	trace_span_end(c->gen_span, "error");
	attempt_end(c, set, false, &f, false);
}

/* Wipe the key and free the request of the attempt */
static void
release_request(Call *c)
{
	if (c->req_live)
	{
		provider_request_free(&c->req);
		c->req_live = false;
	}
	if (c->key)
	{
		maester_forget_key(c->key);
		c->key = NULL;
	}
}

/* The output is evaluated: its SETTLE row, and the call is DONE */
static void
evaluation_done(Call *c, CallSet *set)
{
	attempt_record_evaluation(c, c->rec);
	attempt_end(c, set, true, NULL, true);
}

/*
 * SENT: the transfer finished; settle the attempt and decide what next.
 * An answer is metered at once (its budget reservation settled), then
 * evaluated -- perhaps by grading calls, for which the call waits.
 */
static void
phase_settle(Call *c, CallSet *set)
{
	RouteTarget *t = &c->plan->targets[c->ti];
	Failure		f;
	bool		ok;

	ok = provider_outcome(t->provider, &c->opts.gen, &c->req, c->key, &c->g.resp, &f);
	release_request(c);
	trace_span_end(c->gen_span, ok ? "ok" : "error");
	if (!ok)
	{
		attempt_end(c, set, false, &f, true);
		return;
	}
	/* the provider answered: its circuit hears it now, not after grading */
	circuit_record(t->provider, t->model, true, false);
	c->probe = false;
	attempt_record_outcome(c, t, NULL, c->rec, true);
	inflight_answered(c->inflight, c->rec, c->g.cost ? c->g.cost : c->estimate);
	if (!call_evaluate_begin(c))
		evaluation_done(c, set);
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
	Failure		f;
	int			max_tries;
	double		wait;

	if (!ok)
	{
		f = *fp;
		attempt_record_outcome(c, t, &f, r, false);
	}
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
	{
		budget_settle(&hold, c->g.cost ? c->g.cost : c->estimate);
		attempt_warn_overrun(c, t, c->estimate, c->g.cost, r->max_tokens);
	}
	else if (f.billed && c->g.cost != NULL)
	{
		budget_settle(&hold, c->g.cost);
		attempt_warn_overrun(c, t, c->estimate, c->g.cost, r->max_tokens);
	}
	else if (r->cost[0] == '\0')
		budget_settle_at_estimate(&hold);
	else
		budget_settle(&hold, NULL);
	pfree(r);

	if (ok)
	{
		/* (the circuit heard of the success when the answer came) */
		c->g.provider = p->name;
		c->g.model = c->g.resp.served_model ? c->g.resp.served_model : t->model;
		c->phase = PHASE_DONE;
		return;
	}
	if (sent)
	{
		/* a timeout that was the caller's own shorter deadline: no verdict */
		bool		counts = f.counts &&
			!(c->deadline_bound && strcmp(f.error_class, "timeout") == 0);

		if (counts || !c->probe)
			circuit_record(p, t->model, false, counts);
		else
			circuit_release_probe(p, t->model);
	}
	else if (c->probe)
		circuit_release_probe(p, t->model);	/* the provider said nothing: no verdict */
	c->probe = false;
	call_note_failure(c, p->name, &f);
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
	c->paced = c->tenant_paced = false;
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
		case PHASE_GRADING:
			return c->grades_pending == 0;
		case PHASE_DONE:
		case PHASE_FAILED:
			return false;
	}
	return false;
}

/*
 * A grading call that succeeded is finished where it ends (it has no
 * driver of its own): it has answered, so a failure to record it (its
 * capture) is a WARNING, not its error.
 */
static void
finish_grader(Call *c)
{
	ErrorData  *edata = call_finish_isolated(c);

	if (edata != NULL)
		ereport(WARNING,
				(errmsg("a grading call succeeded, but recording it failed: %s", edata->message)));
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
				if (c->cache_state == RESPCACHE_HIT)	/* DONE, nothing sent */
					set->settle_seq = Max(set->settle_seq, respcache_hit(c));
				else
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
					budget_hold_durable(&c->inflight->hold);
					if (ledger_record_dead(c->cs.slot, c->pending_seq))
						phase_unrecorded(c, set);
					else
						phase_send(c, set);
					continue;
				}
				if (TimestampDifferenceExceeds(c->pending_at, now, maester_ledger_timeout_ms))
					ereport(ERROR,
							(errcode(ERRCODE_MAESTER_LEDGER_UNAVAILABLE),
							 errmsg("the usage ledger did not confirm the call within %d ms",
									maester_ledger_timeout_ms),
							 errdetail("Nothing was sent to the provider.")));
				break;
			case PHASE_SENT:
				if (!c->req.done)
					break;
				phase_settle(c, set);
				continue;
			case PHASE_GRADING:
				if (c->grades_pending > 0)
					break;
				call_evaluate_end(c);
				evaluation_done(c, set);
				continue;
			case PHASE_DONE:
			case PHASE_FAILED:
				break;
		}
		break;
	}
	/* a grading call is finished where it ends: it has no driver of its own */
	if (c->phase == PHASE_DONE && c->parent != NULL)
		finish_grader(c);
	MemoryContextSwitchTo(old);
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
		circuit_release_probe(c->plan->targets[c->ti].provider, c->plan->targets[c->ti].model);
	c->probe = false;
	if (c->gen_span && c->gen_span->duration_us < 0)
		trace_span_end(c->gen_span, "cancelled");
	c->gen_span = NULL;
	if (c->eval_span && c->eval_span->duration_us < 0)
		trace_span_end(c->eval_span, "cancelled");
	c->eval_span = NULL;
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
		if (edata->sqlerrcode == ERRCODE_MAESTER_BUDGET_EXCEEDED)
			c->error_class = "budget";
		else if (edata->sqlerrcode == ERRCODE_INSUFFICIENT_PRIVILEGE)
			c->error_class = "egress_denied";
		else if (edata->sqlerrcode == ERRCODE_MAESTER_LEDGER_UNAVAILABLE)
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

/* Put a call into the set (growing it: grading calls come on top) */
static void
set_add(CallSet *set, Call *c)
{
	if (set->ncalls == set->size)
	{
		set->size = Max(set->size * 2, 4);
		set->calls = repalloc(set->calls, sizeof(Call *) * set->size);
	}
	set->calls[set->ncalls++] = c;
	if (c->parent == NULL)
		set->nroots++;
	else
		set->ngraders++;
	if (set->slot == NULL && c->cs.slot != NULL)
		set->slot = c->cs.slot;
}

/* Take the call at position i out of the set (the last one moves there) */
static void
set_remove(CallSet *set, int i)
{
	if (set->calls[i]->parent == NULL)
		set->nroots--;
	else
		set->ngraders--;
	set->calls[i] = set->calls[--set->ncalls];
}

/*
 * The grading calls a move of `c` prepared wait for room: at most the
 * driver's concurrency of them run at once (as many as the calls they
 * grade), which bounds the transfers of a backend whatever the checks.
 */
static void
take_spawned(CallSet *set, Call *c)
{
	for (int k = 0; k < c->nspawned; k++)
	{
		if (set->nwaiting == set->waiting_size)
		{
			set->waiting_size = Max(set->waiting_size * 2, 8);
			set->waiting = set->waiting ?
				repalloc(set->waiting, sizeof(Call *) * set->waiting_size) :
				MemoryContextAlloc(GetMemoryChunkContext(set->calls),
								   sizeof(Call *) * set->waiting_size);
		}
		set->waiting[set->nwaiting++] = c->spawned[k];
	}
	c->nspawned = 0;
	c->spawned = NULL;
}

/* Waiting grading calls into the set, as room allows (first come first) */
static void
admit_graders(CallSet *set)
{
	int			k = 0;

	while (k < set->nwaiting && set->ngraders < set->max)
		set_add(set, set->waiting[k++]);
	if (k > 0)
	{
		memmove(set->waiting, set->waiting + k, sizeof(Call *) * (set->nwaiting - k));
		set->nwaiting -= k;
	}
}

/*
 * `c` ended before its grading calls did (a cancel, an error): they are
 * torn down and leave the set, before `c` goes to its driver (whose done()
 * may free their memory with c's).
 */
static void
drop_graders(CallSet *set, Call *c)
{
	int			kept = 0;

	for (int i = 0; i < set->nwaiting; i++)
		if (set->waiting[i]->parent != c)
			set->waiting[kept++] = set->waiting[i];
	set->nwaiting = kept;
	HOLD_INTERRUPTS();
	for (int i = 0; i < set->ncalls; i++)
	{
		Call	   *g = set->calls[i];

		if (g->parent != c)
			continue;
		call_abort(g);
		set_remove(set, i);
		i--;
	}
	RESUME_INTERRUPTS();
	c->nspawned = 0;
	c->spawned = NULL;
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
	set.size = d->concurrency;
	set.calls = palloc0(sizeof(Call *) * set.size);
	set.driver = d;
	inflight_register_exit();

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

			if (d->round && d->round(d->arg))
				ereport(ERROR,
						(errcode(ERRCODE_ADMIN_SHUTDOWN),
						 errmsg("maester worker stopping")));
			while ((!exhausted || d->persistent) && set.nroots < set.max)
			{
				Call	   *c = d->next(d->arg);

				if (c == NULL)
				{
					exhausted = true;
					break;
				}
				MemoryContextSwitchTo(outer);
				set_add(&set, c);
				MemoryContextSwitchTo(set.roundcxt);
			}
			admit_graders(&set);
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
					/*
					 * A grading call's error is its own, never the statement's:
					 * under CALLS_SHARED it moves in a subtransaction.
					 */
					if (d->isolation != CALLS_SHARED)
						call_move_isolated(c, &set, d->isolation);
					else if (c->parent != NULL)
						call_move_isolated(c, &set, CALLS_SUBXACT);
					else
						call_move(c, &set);
					if (d->after_move)
						d->after_move(d->arg);
				}
				if (c->nspawned > 0 && c->phase == PHASE_GRADING)
					take_spawned(&set, c);
				if (c->phase == PHASE_DONE || c->phase == PHASE_FAILED)
				{
					if (c->phase == PHASE_FAILED)
					{
						if (d->enter)
							d->enter(c, d->arg);
						call_failed_finish(c);
					}
					set_remove(&set, i);
					i--;
					if (c->parent != NULL)
						call_grade_collect(c);	/* frees it */
					else
					{
						if (c->phase == PHASE_FAILED)
							drop_graders(&set, c);
						d->done(c, d->arg);
					}
					finished = true;
				}
			}
			if (finished)
				continue;		/* take more calls before sleeping */
			if (d->idle)
			{
				long		w = d->idle(d->arg);

				if (w >= 0)
					wait = Min(wait, w);
			}

			/* sleep until the next timer, socket or latch (the ledger's) */
			if (set.nwaiting > 0 && set.ngraders < set.max)
				wait = 0;
			now = GetCurrentTimestamp();
			if (set.slot)
				durable = ledger_durable_seq(set.slot);
			for (int i = 0; i < set.ncalls; i++)
			{
				Call	   *c = set.calls[i];

				if (c->phase == PHASE_PACED || c->phase == PHASE_BACKOFF)
					wait = Min(wait, (long) Max((c->wake_at - now + 999) / 1000, 0));
				else if (c->phase == PHASE_TARGET ||
						 (c->phase == PHASE_GRADING && c->grades_pending == 0))
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

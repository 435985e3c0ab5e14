/*-------------------------------------------------------------------------
 *
 * strategy.c
 *	  Route strategies: which target of a route a call tries first.
 *
 * A route's strategy (maester.route.strategy) puts one target first and
 * the others after it; the call machine then tries them in that order
 * exactly as it tries an ordered chain, so every strategy falls back along
 * the remaining targets when the chosen one fails.
 *
 *	ordered			position order (the fallback chain; the default)
 *	weighted		one target drawn by route_target.weight (0: fallback
 *					only), then the others in position order.  With a
 *					sticky key (options.sticky_key, else the tenant when
 *					route.sticky = 'tenant') the draw is a hash of the key
 *					and the route, so the same caller lands on the same
 *					target while the weights stay the same.
 *	lowest_latency	by the recent moving average of each target's
 *					successful calls' latency (stat.c), in this database
 *	lowest_cost		by the call's worst case at each target's prices (the
 *					amount a budget reserves); unpriced targets last
 *	best_evaluation by the mean evaluation score, else the pass rate, of
 *					the tenant's calls of this prompt version answered by
 *					each model in the last 7 days (the ledger, read again
 *					by a backend every 30 s, or every 5 calls it routes
 *					while a target is still being measured)
 *
 * The three that measure try first, in position order, any target with
 * fewer than STRATEGY_MIN_SAMPLES attempts (or evaluated calls) behind it,
 * so that every target gets measured; a target whose recent attempts
 * mostly fail (a moving average, stat.c) goes last.  Every strategy puts
 * last, and never draws, a target that cannot be tried (its provider
 * disabled, or its key not set): it would never be measured.  A route a
 * budget downgrades a call to is ordered by its own strategy too.  The strategy and why its first target was chosen are on the
 * model_route span and on each of the call's ledger rows.  Embedding calls
 * are never reordered: vectors of two models are not comparable.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "call.h"
#include "catalog.h"
#include "inflight.h"
#include "meter.h"
#include "stat.h"
#include "util.h"

#define STRATEGY_MIN_SAMPLES 5
#define EVAL_WINDOW "7 days"
#define EVAL_REFRESH_US (30 * USECS_PER_SEC)	/* a backend re-reads the ledger after */
/* (or after routing STRATEGY_MIN_SAMPLES calls by what it read) */
#define EVAL_CACHE_SIZE 16

/* One target's place in the order */
typedef struct Ranked
{
	int			index;			/* into the plan's targets */
	int			klass;			/* 0: to measure, 1: ranked, 2: last */
	double		value;			/* lower first */
	char	   *why;
} Ranked;

/* The ledger's evaluations of one prompt version, per model */
typedef struct EvalStats
{
	char	   *tenant;
	char	   *prompt;
	char	   *version;
	TimestampTz read_at;
	int			uses;			/* calls routed by it since */
	bool		measuring;		/* a target had too few calls to judge */
	int			n;
	char	  **models;			/* model identities (usage.model_name) */
	int64	   *calls;
	double	   *pass_rate;
	double	   *mean_score;		/* NaN: no scores */
} EvalStats;

static MemoryContext EvalContext = NULL;
static EvalStats EvalCache[EVAL_CACHE_SIZE];
static int	EvalNext = 0;

static int
ranked_cmp(const void *a, const void *b)
{
	const Ranked *x = (const Ranked *) a;
	const Ranked *y = (const Ranked *) b;

	if (x->klass != y->klass)
		return x->klass - y->klass;
	if (x->klass == 1 && x->value != y->value)
		return x->value < y->value ? -1 : 1;
	return x->index - y->index;
}

/* Run the query of eval_stats as the ledger's owner; SPI stays connected */
static void
eval_read(const char *tenant, const char *prompt, const char *version)
{
	OwnerScope	scope;
	Oid			types[3] = {TEXTOID, TEXTOID, TEXTOID};
	Datum		values[3];

	values[0] = CStringGetTextDatum(tenant);
	values[1] = CStringGetTextDatum(prompt);
	values[2] = CStringGetTextDatum(version);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	maester_become_owner(maester_table_oid("usage"), &scope);
	PG_TRY();
	{
		if (SPI_execute_with_args("SELECT u.model_name, pg_catalog.count(*), "
								  "pg_catalog.avg(CASE WHEN u.eval_status OPERATOR(pg_catalog.=) 'pass' THEN 1.0 ELSE 0.0 END)::pg_catalog.float8, "
								  "pg_catalog.avg(u.eval_score) "
								  "FROM maester.usage u "
								  "WHERE u.tenant OPERATOR(pg_catalog.=) $1 AND u.prompt_name OPERATOR(pg_catalog.=) $2 "
								  "AND u.prompt_version OPERATOR(pg_catalog.=) $3 "
								  "AND u.eval_status OPERATOR(pg_catalog.=) ANY (ARRAY['pass', 'fail']) "
								  "AND u.model_name IS NOT NULL "
								  "AND u.ts OPERATOR(pg_catalog.>=) (pg_catalog.now() OPERATOR(pg_catalog.-) '" EVAL_WINDOW "'::pg_catalog.interval) "
								  "GROUP BY u.model_name",
								  3, types, values, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read the evaluations of prompt \"%s\"", prompt);
	}
	PG_FINALLY();
	{
		maester_restore_user(&scope);
	}
	PG_END_TRY();
}

/* The tenant's evaluated calls of prompt@version by model (cached 30 s) */
static EvalStats *
eval_stats(const char *tenant, const char *prompt, const char *version)
{
	TimestampTz now = GetCurrentTimestamp();
	EvalStats  *e = NULL;
	MemoryContext old;

	for (int i = 0; i < EVAL_CACHE_SIZE; i++)
	{
		EvalStats  *c = &EvalCache[i];

		if (c->tenant && strcmp(c->tenant, tenant) == 0 && strcmp(c->prompt, prompt) == 0 &&
			strcmp(c->version, version) == 0)
		{
			/*
			 * fresh for 30 s; while a target is being measured, only until
			 * it routed as many calls as a target needs
			 */
			if (now - c->read_at < EVAL_REFRESH_US &&
				(!c->measuring || c->uses < STRATEGY_MIN_SAMPLES))
			{
				c->uses++;
				return c;
			}
			e = c;
			break;
		}
	}
	if (EvalContext == NULL)
		EvalContext = AllocSetContextCreate(TopMemoryContext, "maester route evaluations",
											ALLOCSET_SMALL_SIZES);
	if (e == NULL)
	{
		e = &EvalCache[EvalNext];
		EvalNext = (EvalNext + 1) % EVAL_CACHE_SIZE;
	}

	eval_read(tenant, prompt, version);

	/* replace the entry */
	if (e->tenant)
	{
		pfree(e->tenant);
		pfree(e->prompt);
		pfree(e->version);
		if (e->models)
		{
			for (int i = 0; i < e->n; i++)
				pfree(e->models[i]);
			pfree(e->models);
			pfree(e->calls);
			pfree(e->pass_rate);
			pfree(e->mean_score);
		}
	}
	old = MemoryContextSwitchTo(EvalContext);
	e->tenant = pstrdup(tenant);
	e->prompt = pstrdup(prompt);
	e->version = pstrdup(version);
	e->read_at = now;
	e->uses = 1;
	e->measuring = false;
	e->n = (int) SPI_processed;
	e->models = e->n ? palloc(sizeof(char *) * e->n) : NULL;
	e->calls = e->n ? palloc(sizeof(int64) * e->n) : NULL;
	e->pass_rate = e->n ? palloc(sizeof(double) * e->n) : NULL;
	e->mean_score = e->n ? palloc(sizeof(double) * e->n) : NULL;
	for (int i = 0; i < e->n; i++)
	{
		HeapTuple	t = SPI_tuptable->vals[i];
		TupleDesc	d = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		v;

		e->models[i] = pstrdup(SPI_getvalue(t, d, 1));
		e->calls[i] = DatumGetInt64(SPI_getbinval(t, d, 2, &isnull));
		e->pass_rate[i] = DatumGetFloat8(SPI_getbinval(t, d, 3, &isnull));
		v = SPI_getbinval(t, d, 4, &isnull);
		e->mean_score[i] = isnull ? NAN : DatumGetFloat8(v);
	}
	MemoryContextSwitchTo(old);
	SPI_finish();
	return e;
}

/* Draw a usable target by weight: the index into the plan, or -1 when none has weight */
static int
weighted_pick(RoutePlan *plan, const bool *usable, const char *key, int64 *total_out)
{
	int64		total = 0;
	uint64		draw;

	for (int i = 0; i < plan->ntargets; i++)
		total += usable[i] ? plan->targets[i].weight : 0;
	*total_out = total;
	if (total <= 0)
		return -1;
	if (key != NULL)
	{
		uint64		seed = hash_bytes_extended((const unsigned char *) plan->route,
											   strlen(plan->route), 0);

		draw = hash_bytes_extended((const unsigned char *) key, strlen(key), seed) % (uint64) total;
	}
	else
		draw = pg_prng_uint64_range(&pg_global_prng_state, 0, (uint64) total - 1);
	for (int i = 0; i < plan->ntargets; i++)
	{
		if (!usable[i])
			continue;
		if (draw < (uint64) plan->targets[i].weight)
			return i;
		draw -= plan->targets[i].weight;
	}
	return plan->ntargets - 1;	/* not reached */
}

/*
 * Can the target be tried at all: its provider enabled, its key variable
 * set?  One that cannot is put last by every strategy (it would never be
 * measured, so it would stay "to measure", first, forever; with fallback
 * false the call would have nothing to try).  Only a cheap look: no key
 * is read or copied here, and a key's configuration errors stay those of
 * the attempt that uses it (machine.c fetches the key of the target it
 * tries); a key file counts as set.
 */
static bool
target_usable(RouteTarget *t)
{
	const char *v;

	if (!t->provider->enabled)
		return false;
	if (t->provider->api_key_env == NULL)
		return true;
	v = getenv(t->provider->api_key_env);
	return v != NULL && v[0] != '\0';
}

/* Do most of the target's recent attempts fail (over enough of them)? */
static bool
target_failing(RouteTarget *t)
{
	double		ms,
				failing = 0;
	int64		attempts = 0;

	return stat_recent(t->provider->name, t->model, &ms, &failing, &attempts) &&
		attempts >= STRATEGY_MIN_SAMPLES && failing >= 0.5;
}

static const char *
target_label(RouteTarget *t)
{
	return psprintf("%s/%s", t->provider->name, t->model);
}

/*
 * A target that cannot be tried goes last, whatever the strategy measures
 * (nothing is measured for it); true when `t` is one.
 */
static bool
ranked_unusable(Ranked *r, RouteTarget *t, bool usable)
{
	if (usable)
		return false;
	r->klass = 2;
	r->why = psprintf("%s: cannot be tried (provider disabled, or no key)", target_label(t));
	return true;
}

/*
 * Order the targets of call `c`'s plan by its route's strategy; note the
 * strategy and the reason on the call (its ledger rows) and on `span`.
 */
void
route_strategy_apply(Call *c, Span *span)
{
	RoutePlan  *plan = c->plan;
	int			n = plan->ntargets;
	Ranked	   *r;
	const char *strategy = plan->strategy;
	char	   *reason = NULL;
	RouteTarget *sorted;
	bool	   *usable;

	c->g.route_strategy = c->g.route_reason = NULL;
	if (!plan->is_route || strategy == NULL || c->opts.gen.embedding)
		return;
	c->g.route_strategy = strategy;
	r = palloc0(sizeof(Ranked) * Max(n, 1));
	usable = palloc(sizeof(bool) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		r[i].index = i;
		usable[i] = n < 2 || strcmp(strategy, "ordered") == 0 || target_usable(&plan->targets[i]);
	}

	if (n < 2 || strcmp(strategy, "ordered") == 0)
		reason = pstrdup(n < 2 ? "the route has one target" : "in position order");
	else if (strcmp(strategy, "weighted") == 0)
	{
		const char *key = c->opts.sticky_key;
		int64		total;
		int			pick;

		if (key == NULL && plan->sticky_tenant)
			key = c->tenant;
		pick = weighted_pick(plan, usable, key, &total);
		for (int i = 0; i < n; i++)
			r[i].klass = i == pick ? 0 : usable[i] ? 1 : 2;
		if (pick < 0)
			reason = pstrdup("no target that can be tried has a weight: in position order");
		else
		{
			reason = psprintf("%s: weight %d of " INT64_FORMAT ", %s", target_label(&plan->targets[pick]),
							  plan->targets[pick].weight, total,
							  c->opts.sticky_key ? "by sticky key" : key ? "by tenant" : "drawn at random");
		}
	}
	else if (strcmp(strategy, "lowest_latency") == 0)
	{
		for (int i = 0; i < n; i++)
		{
			RouteTarget *t = &plan->targets[i];
			double		ms = NAN,
						failing = 0;
			int64		calls = 0;

			if (ranked_unusable(&r[i], t, usable[i]))
				continue;
			(void) stat_recent(t->provider->name, t->model, &ms, &failing, &calls);
			if (calls < STRATEGY_MIN_SAMPLES)
			{
				r[i].klass = 0;
				r[i].why = psprintf("%s: not measured yet (fewer than %d attempts), tried first",
									target_label(t), STRATEGY_MIN_SAMPLES);
			}
			else if (isnan(ms) || failing >= 0.5)
			{
				r[i].klass = 2;
				r[i].why = psprintf("%s: its recent attempts fail", target_label(t));
			}
			else
			{
				r[i].klass = 1;
				r[i].value = ms;
				r[i].why = psprintf("%s: %.1f ms recent mean latency, the lowest of %d", target_label(t), ms, n);
			}
		}
	}
	else if (strcmp(strategy, "lowest_cost") == 0)
	{
		TimestampTz now = GetCurrentTimestamp();

		for (int i = 0; i < n; i++)
		{
			RouteTarget *t = &plan->targets[i];
			const char *names[3] = {t->model, t->name, c->g.requested_model};
			bool		priced;
			Numeric		cost;

			if (ranked_unusable(&r[i], t, usable[i]))
				continue;
			cost = maester_cost(names, lengthof(names), c->cs.est_input_tokens,
								target_max_tokens(t, c->opts.gen.max_tokens), 0, 0, 0,
								now, &priced);
			if (!priced || cost == NULL)
			{
				r[i].klass = 2;
				r[i].why = psprintf("%s: no price", target_label(t));
			}
			else if (target_failing(t))
			{
				r[i].klass = 2;
				r[i].why = psprintf("%s: its recent attempts fail", target_label(t));
			}
			else
			{
				r[i].klass = 1;
				r[i].value = DatumGetFloat8(DirectFunctionCall1(numeric_float8, NumericGetDatum(cost)));
				r[i].why = psprintf("%s: at most %s USD, the cheapest of %d", target_label(t),
									DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(cost))), n);
			}
		}
	}
	else if (strcmp(strategy, "best_evaluation") == 0)
	{
		if (c->g.prompt_name == NULL || c->g.prompt_version == NULL)
			reason = pstrdup("no prompt version to judge by: in position order");
		else
		{
			EvalStats  *e = eval_stats(c->tenant, c->g.prompt_name, c->g.prompt_version);

			for (int i = 0; i < n; i++)
			{
				RouteTarget *t = &plan->targets[i];
				int			m = -1;

				if (ranked_unusable(&r[i], t, usable[i]))
					continue;
				for (int k = 0; k < e->n && m < 0; k++)
					if (strcmp(e->models[k], t->name) == 0)
						m = k;
				if (m < 0 || e->calls[m] < STRATEGY_MIN_SAMPLES)
				{
					r[i].klass = 0;
					e->measuring = true;
					r[i].why = psprintf("%s: " INT64_FORMAT " evaluated calls of %s@%s so far, measured first",
										target_label(t), m < 0 ? 0 : e->calls[m],
										c->g.prompt_name, c->g.prompt_version);
				}
				else if (target_failing(t))
				{
					r[i].klass = 2;
					r[i].why = psprintf("%s: its recent attempts fail", target_label(t));
				}
				else
				{
					bool		scored = !isnan(e->mean_score[m]);

					r[i].klass = 1;
					r[i].value = -(scored ? e->mean_score[m] : e->pass_rate[m]);
					r[i].why = psprintf("%s: %s %.3f over " INT64_FORMAT " evaluated calls of %s@%s, the best of %d",
										target_label(t), scored ? "mean score" : "pass rate",
										scored ? e->mean_score[m] : e->pass_rate[m], e->calls[m],
										c->g.prompt_name, c->g.prompt_version, n);
				}
			}
		}
	}
	else
		reason = psprintf("unknown strategy \"%s\": in position order", strategy);

	qsort(r, n, sizeof(Ranked), ranked_cmp);
	if (reason == NULL)
		reason = r[0].why ? r[0].why : pstrdup("in position order");
	sorted = palloc(sizeof(RouteTarget) * Max(n, 1));
	for (int i = 0; i < n; i++)
		sorted[i] = plan->targets[r[i].index];
	plan->targets = sorted;
	c->g.route_reason = reason;

	/* an ordered chain is what it always was: the trace says no more */
	if (strcmp(strategy, "ordered") == 0 || span == NULL)
		return;
	trace_attr_str(span, "maester.route.strategy", strategy);
	trace_attr_str(span, "maester.route.reason", reason);
	{
		StringInfoData order;

		initStringInfo(&order);
		for (int i = 0; i < n; i++)
			appendStringInfo(&order, "%s%s", i ? ", " : "", target_label(&sorted[i]));
		trace_attr_str(span, "maester.route.order", order.data);
	}
}

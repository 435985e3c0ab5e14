/*-------------------------------------------------------------------------
 *
 * budget.c
 *	  Budgets that cannot be overspent: reservations and settlement in
 *	  shared memory.
 *
 * A budget (maester.budget) caps what a tenant -- optionally only for one
 * prompt or one model -- may spend per day, per month (UTC) or in total.
 * Before each attempt the gateway reserves the attempt's worst-case cost
 * (a token per byte of the prompt, plus max_tokens, at the model's prices)
 * in every budget that applies; the check and the reservation happen
 * together under one lock, so concurrent sessions can never reserve past a
 * limit.  After the attempt the reservation is replaced by what it really
 * cost (which is at most the estimate).  Hence spent + reserved never
 * exceeds the limit of a blocking budget.
 *
 * State per budget and period, in shared memory (BudgetShared, one
 * LWLock): spent and reserved in nano-dollars (int64; costs are rounded
 * up).  It is loaded lazily from the ledger the first time a backend needs
 * it in a period (sum of the settled rows of the period); settlements that
 * happen while a load runs are added on top, which can only over-count.
 *
 * Actions when a reservation would pass the limit: block (the call fails
 * with SQLSTATE MB001 and leaves a 'blocked' ledger row; nothing is sent),
 * downgrade (the call goes to the budget's downgrade_model instead, which
 * must fit), warn (a WARNING, and the call proceeds).  Unpriced models are
 * blocked by any applicable budget unless maester.budget_allow_unpriced.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/sinval.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "budget.h"
#include "catalog.h"
#include "maester.h"
#include "settings.h"
#include "util.h"

typedef struct BudgetState
{
	Oid			dboid;
	int64		id;				/* maester.budget.id */
	TimestampTz period_start;	/* of the period the counters are for */
	bool		loaded;
	bool		loading;
	int64		spent;			/* nano-dollars */
	int64		reserved;
	int64		delta;			/* settled while loading */
} BudgetState;

typedef struct BudgetShared
{
	LWLock	   *lock;
	int			max;
	int			n;
	BudgetState states[FLEXIBLE_ARRAY_MEMBER];
} BudgetShared;

/* One row of maester.budget, cached per backend */
typedef struct BudgetConf
{
	int64		id;
	char	   *tenant;
	char	   *prompt;			/* NULL: any */
	char	   *model;			/* NULL: any */
	char		period;			/* 'd'ay, 'm'onth, 't'otal */
	int64		limit;			/* nano-dollars */
	Numeric		limit_usd;
	char		action;			/* 'b'lock, 'd'owngrade, 'w'arn */
	char	   *downgrade_model;
} BudgetConf;

static BudgetShared *budget_shared = NULL;
static MemoryContext BudgetContext = NULL;
static bool BudgetStale = true;
static Oid	BudgetRelid = InvalidOid;
static int	nbudgets = 0;
static BudgetConf *budgets = NULL;

Size
budget_shmem_size(void)
{
	return add_size(offsetof(BudgetShared, states),
					mul_size(sizeof(BudgetState), maester_max_budgets));
}

/* Called from the shmem startup hook, under AddinShmemInitLock */
void
budget_shmem_init(void)
{
	bool		found;

	budget_shared = ShmemInitStruct("maester budgets", budget_shmem_size(), &found);
	if (!found)
	{
		budget_shared->lock = &(GetNamedLWLockTranche("maester budgets"))->lock;
		budget_shared->max = maester_max_budgets;
		budget_shared->n = 0;
	}
}

static void
budget_cache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == BudgetRelid)
		BudgetStale = true;
}

void
budget_init(void)
{
	CacheRegisterRelcacheCallback(budget_cache_callback, (Datum) 0);
}

/* numeric USD -> nano-dollars, rounded up */
static int64
usd_to_nano(Numeric n)
{
	Datum		d;

	d = DirectFunctionCall2(numeric_mul, NumericGetDatum(n),
							DirectFunctionCall1(int8_numeric, Int64GetDatum(1000000000)));
	d = DirectFunctionCall1(numeric_ceil, d);
	return DatumGetInt64(DirectFunctionCall1(numeric_int8, d));
}

static Numeric
nano_to_usd(int64 v)
{
	Datum		d = DirectFunctionCall2(numeric_div,
										DirectFunctionCall1(int8_numeric, Int64GetDatum(v)),
										DirectFunctionCall1(int8_numeric, Int64GetDatum(1000000000)));

	return DatumGetNumeric(DirectFunctionCall1(numeric_trim_scale, d));
}

static char *
nano_text(int64 v)
{
	return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(nano_to_usd(v))));
}

/* (Re)load maester.budget into BudgetContext, as its owner */
static void
budget_load(void)
{
	Oid			nsp = get_namespace_oid("maester", false);
	int			rc;
	OwnerScope	scope;

	if (BudgetContext == NULL)
		BudgetContext = AllocSetContextCreate(TopMemoryContext, "maester budgets",
											  ALLOCSET_SMALL_SIZES);
	MemoryContextReset(BudgetContext);
	nbudgets = 0;
	budgets = NULL;
	BudgetStale = true;
	BudgetRelid = get_relname_relid("budget", nsp);

	maester_become_owner(BudgetRelid, &scope);
	PG_TRY();
	{
		SPIPlanPtr	plan;

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		plan = SPI_prepare("SELECT b.id, b.tenant, b.prompt, b.model, b.period, b.limit_usd, "
						   "b.action, b.downgrade_model FROM maester.budget b ORDER BY b.id", 0, NULL);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed");
		rc = SPI_execute_snapshot(plan, NULL, NULL, GetLatestSnapshot(), InvalidSnapshot,
								  true, false, 0);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "could not read maester.budget");
		budgets = MemoryContextAllocZero(BudgetContext, sizeof(BudgetConf) * Max(SPI_processed, 1));
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	t = SPI_tuptable->vals[i];
			TupleDesc	d = SPI_tuptable->tupdesc;
			BudgetConf *b = &budgets[i];
			bool		isnull;
			char	   *v;
			MemoryContext old = MemoryContextSwitchTo(BudgetContext);

			b->id = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
			b->tenant = pstrdup(SPI_getvalue(t, d, 2));
			v = SPI_getvalue(t, d, 3);
			b->prompt = v ? pstrdup(v) : NULL;
			v = SPI_getvalue(t, d, 4);
			b->model = v ? pstrdup(v) : NULL;
			b->period = SPI_getvalue(t, d, 5)[0];
			b->limit_usd = DatumGetNumericCopy(SPI_getbinval(t, d, 6, &isnull));
			b->limit = DatumGetInt64(DirectFunctionCall1(numeric_int8,
														 DirectFunctionCall1(numeric_floor,
																			 DirectFunctionCall2(numeric_mul,
																								 NumericGetDatum(b->limit_usd),
																								 DirectFunctionCall1(int8_numeric, Int64GetDatum(1000000000))))));
			b->action = SPI_getvalue(t, d, 7)[0];
			v = SPI_getvalue(t, d, 8);
			b->downgrade_model = v ? pstrdup(v) : NULL;
			MemoryContextSwitchTo(old);
		}
		nbudgets = SPI_processed;
		SPI_finish();
	}
	PG_FINALLY();
	{
		maester_restore_user(&scope);
	}
	PG_END_TRY();
	BudgetStale = false;
}

/* Start of the budget's current period (UTC) */
static TimestampTz
period_start(BudgetConf *b, TimestampTz now)
{
	if (b->period == 't')
		return 0;
	return DatumGetTimestampTz(DirectFunctionCall3(timestamptz_trunc_zone,
												   CStringGetTextDatum(b->period == 'd' ? "day" : "month"),
												   TimestampTzGetDatum(now),
												   CStringGetTextDatum("UTC")));
}

/* Find or create the shared state of a budget; lock held exclusively */
static BudgetState *
state_for(BudgetConf *b)
{
	BudgetState *s;

	for (int i = 0; i < budget_shared->n; i++)
		if (budget_shared->states[i].dboid == MyDatabaseId &&
			budget_shared->states[i].id == b->id)
			return &budget_shared->states[i];
	if (budget_shared->n >= budget_shared->max)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many budgets in use"),
				 errhint("Raise maester.max_budgets (currently %d) and restart the server.",
						 maester_max_budgets)));
	s = &budget_shared->states[budget_shared->n++];
	memset(s, 0, sizeof(*s));
	s->dboid = MyDatabaseId;
	s->id = b->id;
	return s;
}

/* What the ledger says budget `b` spent since `from` (nano-dollars) */
static int64
ledger_spent(BudgetConf *b, TimestampTz from)
{
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	Oid			types[4] = {TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID};
	volatile int64 result = 0;
	OwnerScope	scope;

	args[0] = CStringGetTextDatum(b->tenant);
	args[1] = b->prompt ? CStringGetTextDatum(b->prompt) : (Datum) 0;
	nulls[1] = b->prompt ? ' ' : 'n';
	args[2] = b->model ? CStringGetTextDatum(b->model) : (Datum) 0;
	nulls[2] = b->model ? ' ' : 'n';
	args[3] = TimestampTzGetDatum(from);

	maester_become_owner(BudgetRelid, &scope);
	PG_TRY();
	{
		int			rc;

		SPIPlanPtr	plan;

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		/* the latest snapshot: rows the worker wrote (orphans) since the statement began */
		plan = SPI_prepare(
			"SELECT COALESCE(pg_catalog.sum(COALESCE(u.cost_usd, u.estimated_cost_usd, 0)), 0) "
			"FROM maester.usage u "
			"WHERE u.tenant OPERATOR(pg_catalog.=) $1 "
			"AND ($2::pg_catalog.text IS NULL OR u.prompt_name OPERATOR(pg_catalog.=) $2) "
			"AND ($3::pg_catalog.text IS NULL OR u.model OPERATOR(pg_catalog.=) $3 "
			"     OR u.requested_model OPERATOR(pg_catalog.=) $3) "
			"AND (u.ts AT TIME ZONE 'UTC')::pg_catalog.date OPERATOR(pg_catalog.>=) ($4 AT TIME ZONE 'UTC')::pg_catalog.date "
			"AND u.ts OPERATOR(pg_catalog.>=) $4 "
			"AND u.status OPERATOR(pg_catalog.<>) 'pending'",
			4, types);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		rc = SPI_execute_snapshot(plan, args, nulls, GetLatestSnapshot(), InvalidSnapshot,
								  true, false, 1);
		if (rc != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "could not sum a budget's spending");
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

			result = usd_to_nano(DatumGetNumeric(d));
		}
		SPI_finish();
	}
	PG_FINALLY();
	{
		maester_restore_user(&scope);
	}
	PG_END_TRY();
	return result;
}

/* Make sure budget `b`'s state is loaded for the current period */
static void
ensure_loaded(BudgetConf *b, TimestampTz now)
{
	TimestampTz start = period_start(b, now);
	BudgetState *s;
	bool		need;
	volatile int64 spent = 0;

	LWLockAcquire(budget_shared->lock, LW_EXCLUSIVE);
	s = state_for(b);
	if (s->period_start != start)
	{
		/* a new period: start over (reservations in flight stay) */
		s->period_start = start;
		s->loaded = false;
		s->spent = 0;
		s->delta = 0;
	}
	need = !s->loaded && !s->loading;
	if (need)
	{
		s->loading = true;
		s->delta = 0;
	}
	LWLockRelease(budget_shared->lock);
	if (!need)
	{
		/* someone else is loading: wait for it (briefly) */
		for (int i = 0; i < 1000; i++)
		{
			bool		loaded;

			LWLockAcquire(budget_shared->lock, LW_SHARED);
			loaded = s->loaded || !s->loading;
			LWLockRelease(budget_shared->lock);
			if (loaded)
				break;
			pg_usleep(1000);
			CHECK_FOR_INTERRUPTS();
		}
		return;
	}

	PG_TRY();
	{
		spent = ledger_spent(b, start);
	}
	PG_CATCH();
	{
		LWLockAcquire(budget_shared->lock, LW_EXCLUSIVE);
		s->loading = false;
		LWLockRelease(budget_shared->lock);
		PG_RE_THROW();
	}
	PG_END_TRY();

	LWLockAcquire(budget_shared->lock, LW_EXCLUSIVE);
	if (s->period_start == start)
	{
		s->spent = spent + s->delta;
		s->loaded = true;
	}
	s->loading = false;
	LWLockRelease(budget_shared->lock);
}

/* Does budget `b` apply to this call? */
static bool
applies(BudgetConf *b, const char *tenant, const char *prompt, const char *model)
{
	return strcmp(b->tenant, tenant) == 0 &&
		(b->prompt == NULL || (prompt && strcmp(b->prompt, prompt) == 0)) &&
		(b->model == NULL || (model && strcmp(b->model, model) == 0));
}

/*
 * Reserve the worst case `estimate` (NULL: unpriced) of an attempt to
 * `model` in every budget that applies.  Returns BUDGET_OK with `hold`
 * filled; BUDGET_DOWNGRADE with *downgrade set when a downgrade budget
 * would be exceeded (nothing is reserved then); raises MB001 when a
 * blocking budget would be (after the caller's `on_block`, which records
 * the blocked row).
 */
BudgetVerdict
budget_reserve(const char *tenant, const char *prompt, const char *model,
			   Numeric estimate, BudgetHold *hold, char **downgrade,
			   void (*on_block) (void *), void *arg)
{
	TimestampTz now = GetCurrentTimestamp();
	int64		est;
	int			idx[BUDGET_MAX_APPLICABLE];
	BudgetConf *conf[BUDGET_MAX_APPLICABLE];
	int			n = 0;
	BudgetConf *violated = NULL;
	int64		v_spent = 0;
	int64		v_reserved = 0;

	memset(hold, 0, sizeof(*hold));
	AcceptInvalidationMessages();
	if (BudgetStale)
		budget_load();
	for (int i = 0; i < nbudgets && n < BUDGET_MAX_APPLICABLE; i++)
		if (applies(&budgets[i], tenant, prompt, model))
			conf[n++] = &budgets[i];
	if (n == 0)
		return BUDGET_OK;

	if (estimate == NULL && !maester_budget_allow_unpriced)
		violated = conf[0];
	est = estimate ? usd_to_nano(estimate) : 0;

	for (int i = 0; i < n; i++)
		ensure_loaded(conf[i], now);

	/* check and reserve together */
	LWLockAcquire(budget_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < n; i++)
	{
		if (!state_for(conf[i])->loaded)
		{
			LWLockRelease(budget_shared->lock);
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("budget %lld is not loaded yet", (long long) conf[i]->id),
					 errdetail("Its spending is still being summed from the ledger; nothing was sent."),
					 errhint("Try again.")));
		}
	}
	for (int i = 0; i < n && violated == NULL; i++)
	{
		BudgetState *s = state_for(conf[i]);

		idx[i] = s - budget_shared->states;
		if (conf[i]->action != 'w' && s->spent + s->reserved + est > conf[i]->limit)
		{
			violated = conf[i];
			v_spent = s->spent;
			v_reserved = s->reserved;
		}
	}
	if (violated == NULL)
	{
		for (int i = 0; i < n; i++)
		{
			BudgetState *s = &budget_shared->states[idx[i]];

			if (conf[i]->action == 'w' && s->spent + s->reserved + est > conf[i]->limit)
				hold->warn_id = conf[i]->id;
			s->reserved += est;
			hold->idx[hold->n++] = idx[i];
		}
		hold->estimate = est;
	}
	LWLockRelease(budget_shared->lock);

	if (violated == NULL)
	{
		if (hold->warn_id)
			ereport(WARNING,
					(errmsg("budget %lld of tenant \"%s\" is exceeded", (long long) hold->warn_id, tenant),
					 errdetail("The budget's action is warn: the call proceeds.")));
		return BUDGET_OK;
	}
	if (violated->action == 'd' && violated->downgrade_model &&
		strcmp(violated->downgrade_model, model) != 0)
	{
		*downgrade = pstrdup(violated->downgrade_model);
		return BUDGET_DOWNGRADE;
	}
	if (on_block)
		on_block(arg);
	if (estimate == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_MAESTER_BUDGET_EXCEEDED),
				 errmsg("budget %lld of tenant \"%s\" blocks model \"%s\", which has no price",
						(long long) violated->id, tenant, model),
				 errdetail("A budget cannot bound the cost of an unpriced model; nothing was sent."),
				 errhint("Add the model's price to maester.price, or set maester.budget_allow_unpriced.")));
	ereport(ERROR,
			(errcode(ERRCODE_MAESTER_BUDGET_EXCEEDED),
			 errmsg("budget %lld of tenant \"%s\" is exhausted", (long long) violated->id, tenant),
			 errdetail("Limit %s USD per %s; spent %s USD, reserved %s USD by calls in flight; this call could cost up to %s USD. Nothing was sent.",
					   DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(violated->limit_usd))),
					   violated->period == 'd' ? "day" : violated->period == 'm' ? "month" : "all time",
					   nano_text(v_spent), nano_text(v_reserved), nano_text(est))));
	return BUDGET_OK;			/* keep compiler quiet */
}

/*
 * Replace a hold's reservation by what the attempt cost (`actual`, NULL:
 * unpriced, counted as 0).  Never throws on the numeric side for valid
 * input; safe to call on a zero hold.
 */
void
budget_settle(BudgetHold *hold, Numeric actual)
{
	int64		cost = actual ? usd_to_nano(actual) : 0;

	if (hold->n == 0)
		return;
	LWLockAcquire(budget_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < hold->n; i++)
	{
		BudgetState *s = &budget_shared->states[hold->idx[i]];

		s->reserved -= hold->estimate;
		if (s->loading)
			s->delta += cost;
		s->spent += cost;
	}
	LWLockRelease(budget_shared->lock);
	hold->n = 0;
}

/* Settle a hold at its estimate, without numerics (exit and error paths) */
void
budget_settle_at_estimate(BudgetHold *hold)
{
	if (hold->n == 0 || budget_shared == NULL)
		return;
	LWLockAcquire(budget_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < hold->n; i++)
	{
		BudgetState *s = &budget_shared->states[hold->idx[i]];

		s->reserved -= hold->estimate;
		if (s->loading)
			s->delta += hold->estimate;
		s->spent += hold->estimate;
	}
	LWLockRelease(budget_shared->lock);
	hold->n = 0;
}

PG_FUNCTION_INFO_V1(budget_counters);
/*
 * maester.budget_counters() RETURNS SETOF (id, period_start, spent_usd,
 * reserved_usd, loaded): the shared counters of this database's budgets.
 */
Datum
budget_counters(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	BudgetState *copy;
	int			n;

	maester_check_catalog();
	maester_require_preload();
	InitMaterializedSRF(fcinfo, 0);
	LWLockAcquire(budget_shared->lock, LW_SHARED);
	n = budget_shared->n;
	copy = palloc(sizeof(BudgetState) * Max(n, 1));
	memcpy(copy, budget_shared->states, sizeof(BudgetState) * n);
	LWLockRelease(budget_shared->lock);
	for (int i = 0; i < n; i++)
	{
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, false};

		if (copy[i].dboid != MyDatabaseId)
			continue;
		values[0] = Int64GetDatum(copy[i].id);
		values[1] = TimestampTzGetDatum(copy[i].period_start);
		nulls[1] = copy[i].period_start == 0;
		values[2] = NumericGetDatum(nano_to_usd(copy[i].spent));
		values[3] = NumericGetDatum(nano_to_usd(copy[i].reserved));
		values[4] = BoolGetDatum(copy[i].loaded);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

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
#include "common/hashfn.h"
#include "common/int.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "storage/sinval.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "budget.h"
#include "catalog.h"
#include "ledger.h"
#include "maester.h"
#include "router.h"
#include "settings.h"
#include "tenant.h"
#include "util.h"

typedef struct BudgetState
{
	Oid			dboid;			/* InvalidOid: free */
	int64		id;				/* maester.budget.id */
	uint32		scope;			/* hash of tenant, prompt, model, period */
	TimestampTz period_start;	/* of the period the counters are for */
	bool		loaded;
	pid_t		loader;			/* the backend summing the ledger, 0: none */
	TimestampTz loaded_at;		/* taken before the load's snapshot */
	int64		spent;			/* nano-dollars */
	int64		reserved;		/* by the holds of calls in flight */
	int64		inflight;		/* in flight when loaded, reserved elsewhere */
	int64		delta;			/* settled while loading */
} BudgetState;

typedef struct BudgetShared
{
	LWLock	   *lock;
	ConditionVariable loaded_cv;	/* broadcast when a load ends */
	int			max;
	int			n;				/* high-water mark of states[] */
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
	uint32		scope;
} BudgetConf;

static BudgetShared *budget_shared = NULL;
static MemoryContext BudgetContext = NULL;
static bool BudgetStale = true;
static uint64 BudgetRouterGen = 0;	/* router_generation() the budgets were resolved at */
static Oid	BudgetRelid = InvalidOid;
static int	nbudgets = 0;
static BudgetConf *budgets = NULL;
static int	LoadingIdx = -1;	/* the state this backend is loading */
static bool ExitRegistered = false;

/* nano-dollars never wrap: sums saturate */
#define NANO_MAX PG_INT64_MAX

static inline int64
nano_add(int64 a, int64 b)
{
	int64		r;

	if (pg_add_s64_overflow(a, b, &r))
		return b > 0 ? NANO_MAX : PG_INT64_MIN;
	return r;
}

static inline int64
nano_sub_floor(int64 a, int64 b)
{
	int64		r;

	if (pg_sub_s64_overflow(a, b, &r))
		return 0;
	return Max(r, 0);
}

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
		ConditionVariableInit(&budget_shared->loaded_cv);
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

/*
 * numeric USD -> nano-dollars, rounded up (or down); NaN and amounts past
 * what int64 holds saturate, so that no amount makes a call fail.
 */
static int64
usd_to_nano_round(Numeric n, bool up)
{
	static Numeric max_usd = NULL;
	Datum		d;

	if (max_usd == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		/* 9,223,372,036 USD: the most nano-dollars an int64 holds */
		max_usd = DatumGetNumeric(DirectFunctionCall1(int8_numeric, Int64GetDatum(NANO_MAX / 1000000000)));
		MemoryContextSwitchTo(old);
	}
	if (numeric_is_nan(n) || DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(n),
																 NumericGetDatum(max_usd))) >= 0)
		return NANO_MAX;
	d = DirectFunctionCall2(numeric_mul, NumericGetDatum(n),
							DirectFunctionCall1(int8_numeric, Int64GetDatum(1000000000)));
	d = up ? DirectFunctionCall1(numeric_ceil, d) : DirectFunctionCall1(numeric_floor, d);
	if (DatumGetBool(DirectFunctionCall2(numeric_lt, d, DirectFunctionCall1(int8_numeric, Int64GetDatum(0)))))
		return 0;
	return DatumGetInt64(DirectFunctionCall1(numeric_int8, d));
}

static int64
usd_to_nano(Numeric n)
{
	return usd_to_nano_round(n, true);
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

/* What identifies the calls a budget counts: a change means a recount */
static uint32
scope_hash(BudgetConf *b)
{
	uint32		h = hash_bytes((const unsigned char *) b->tenant, strlen(b->tenant));

	h = hash_combine(h, b->prompt ? hash_bytes((const unsigned char *) b->prompt, strlen(b->prompt)) : 1);
	h = hash_combine(h, b->model ? hash_bytes((const unsigned char *) b->model, strlen(b->model)) : 2);
	return hash_combine(h, (uint32) b->period);
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
			b->limit = usd_to_nano_round(b->limit_usd, false);
			b->action = SPI_getvalue(t, d, 7)[0];
			v = SPI_getvalue(t, d, 8);
			b->downgrade_model = v ? pstrdup(v) : NULL;
			b->scope = scope_hash(b);
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
	/* a budget on a model counts it by its identity (router.c) */
	for (int i = 0; i < nbudgets; i++)
		if (budgets[i].model)
		{
			char	   *id = router_model_identity(budgets[i].model);

			budgets[i].model = MemoryContextStrdup(BudgetContext, id);
			budgets[i].scope = scope_hash(&budgets[i]);
		}
	BudgetRouterGen = router_generation();
	BudgetStale = false;
}

/*
 * This backend's budgets, reloaded when the budget table changed or a
 * model's identity may have (router_generation: the budgets' models are
 * resolved through it)
 */
static void
budget_fresh(void)
{
	AcceptInvalidationMessages();
	if (BudgetStale || BudgetRouterGen != router_generation())
		budget_load();
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

/* Budget `id` in this backend's list, or NULL */
static BudgetConf *
budget_conf(int64 id)
{
	for (int i = 0; i < nbudgets; i++)
		if (budgets[i].id == id)
			return &budgets[i];
	return NULL;
}

/* Is budget id `id` still in this backend's list? */
static bool
budget_listed(int64 id)
{
	return budget_conf(id) != NULL;
}

/* The shared state of budget `id` of this database, or NULL; lock held */
static BudgetState *
state_find(int64 id)
{
	for (int i = 0; i < budget_shared->n; i++)
		if (budget_shared->states[i].dboid == MyDatabaseId &&
			budget_shared->states[i].id == id)
			return &budget_shared->states[i];
	return NULL;
}

/*
 * Find or create the shared state of a budget; lock held exclusively.  A
 * free entry is reused; when none is left, the states of this database's
 * budgets that are gone (deleted, nothing reserved, not loading) are
 * freed first, so maester.max_budgets counts live budgets.
 */
static BudgetState *
state_for(BudgetConf *b)
{
	BudgetState *s = state_find(b->id);

	if (s != NULL)
		return s;
	for (int pass = 0; pass < 2 && s == NULL; pass++)
	{
		for (int i = 0; i < budget_shared->n && s == NULL; i++)
		{
			BudgetState *e = &budget_shared->states[i];

			if (pass == 1 && e->dboid == MyDatabaseId && !budget_listed(e->id) &&
				e->reserved == 0 && e->loader == 0)
				e->dboid = InvalidOid;
			if (e->dboid == InvalidOid)
				s = e;
		}
		if (s == NULL && pass == 0 && budget_shared->n < budget_shared->max)
			s = &budget_shared->states[budget_shared->n++];
	}
	if (s == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many budgets in use"),
				 errdetail("The %d budget counters of the server are taken by budgets in use.",
						   maester_max_budgets),
				 errhint("Raise maester.max_budgets and restart the server.")));
	memset(s, 0, sizeof(*s));
	s->dboid = MyDatabaseId;
	s->id = b->id;
	s->scope = b->scope;
	s->period_start = -1;
	return s;
}

/*
 * Free the budget states of database `dboid` (which is gone); the
 * launcher calls this when it frees the database's slot.
 */
void
budget_forget_database(Oid dboid)
{
	LWLockAcquire(budget_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < budget_shared->n; i++)
		if (budget_shared->states[i].dboid == dboid)
			budget_shared->states[i].dboid = InvalidOid;
	LWLockRelease(budget_shared->lock);
}

/*
 * What the ledger says of budget `b` since `from` (nano-dollars): what
 * the settled rows cost, and the estimates of the rows still pending
 * (calls in flight, whose reservation this budget did not see).
 */
static void
ledger_sums(BudgetConf *b, TimestampTz from, int64 *spent, int64 *pending)
{
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	Oid			types[4] = {TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID};
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
		bool		isnull;

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		plan = SPI_prepare(
			"SELECT COALESCE(pg_catalog.sum(COALESCE(u.cost_usd, u.estimated_cost_usd, 0)) "
			"         FILTER (WHERE u.status OPERATOR(pg_catalog.<>) 'pending'), 0), "
			"       COALESCE(pg_catalog.sum(COALESCE(u.estimated_cost_usd, 0)) "
			"         FILTER (WHERE u.status OPERATOR(pg_catalog.=) 'pending'), 0) "
			"FROM maester.usage u "
			"WHERE u.tenant OPERATOR(pg_catalog.=) $1 "
			"AND ($2::pg_catalog.text IS NULL OR u.prompt_name OPERATOR(pg_catalog.=) $2) "
			"AND ($3::pg_catalog.text IS NULL OR u.model_name OPERATOR(pg_catalog.=) $3 "
			"     OR (u.model_name IS NULL AND (u.model OPERATOR(pg_catalog.=) $3 "
			"                                   OR u.requested_model OPERATOR(pg_catalog.=) $3))) "
			"AND (u.ts AT TIME ZONE 'UTC')::pg_catalog.date OPERATOR(pg_catalog.>=) ($4 AT TIME ZONE 'UTC')::pg_catalog.date "
			"AND u.ts OPERATOR(pg_catalog.>=) $4",
			4, types);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		/* the latest snapshot: rows the worker wrote since the statement began */
		rc = SPI_execute_snapshot(plan, args, nulls, GetLatestSnapshot(), InvalidSnapshot,
								  true, false, 1);
		if (rc != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "could not sum a budget's spending");
		*spent = usd_to_nano(DatumGetNumeric(SPI_getbinval(SPI_tuptable->vals[0],
														   SPI_tuptable->tupdesc, 1, &isnull)));
		*pending = usd_to_nano(DatumGetNumeric(SPI_getbinval(SPI_tuptable->vals[0],
															 SPI_tuptable->tupdesc, 2, &isnull)));
		SPI_finish();
	}
	PG_FINALLY();
	{
		maester_restore_user(&scope);
	}
	PG_END_TRY();
}

/* End this backend's load of state `idx`, if it still is ours; wake waiters */
static void
load_abandon(int idx)
{
	LWLockAcquire(budget_shared->lock, LW_EXCLUSIVE);
	if (budget_shared->states[idx].loader == MyProcPid)
		budget_shared->states[idx].loader = 0;
	LWLockRelease(budget_shared->lock);
	LoadingIdx = -1;
	ConditionVariableBroadcast(&budget_shared->loaded_cv);
}

/* A backend that exits in the middle of a load (FATAL, terminate) gives it up */
static void
budget_exit(int code, Datum arg)
{
	if (LoadingIdx >= 0 && budget_shared != NULL)
		load_abandon(LoadingIdx);
	budget_envelope_close();
}

/*
 * Make sure budget `b`'s state is loaded for the current period (see the
 * header): one backend sums the ledger, the others sleep on the
 * condition variable until it is done, as long as it takes (their
 * statement_timeout applies).  A load whose backend is gone -- an error,
 * FATAL, pg_terminate_backend -- is taken over.  A budget whose scope
 * changed (UPDATE of tenant, prompt, model or period) is counted again.
 */
static void
ensure_loaded(BudgetConf *b, TimestampTz now)
{
	TimestampTz start = period_start(b, now);

	for (;;)
	{
		BudgetState *s;
		int			idx;
		TimestampTz loaded_at;
		int64		spent = 0;
		int64		pending = 0;

		LWLockAcquire(budget_shared->lock, LW_EXCLUSIVE);
		s = state_for(b);
		idx = s - budget_shared->states;
		if (s->period_start != start || s->scope != b->scope)
		{
			/* a new period, or another scope: count again (holds stay) */
			s->period_start = start;
			s->scope = b->scope;
			s->loaded = false;
			s->spent = s->inflight = s->delta = 0;
		}
		if (s->loaded)
		{
			LWLockRelease(budget_shared->lock);
			ConditionVariableCancelSleep();
			return;
		}
		if (s->loader != 0 && s->loader != MyProcPid && BackendPidGetProc(s->loader) == NULL)
			s->loader = 0;		/* abandoned without a word (a crash of its own) */
		if (s->loader != 0)
		{
			LWLockRelease(budget_shared->lock);
			(void) ConditionVariableTimedSleep(&budget_shared->loaded_cv, 1000, PG_WAIT_EXTENSION);
			continue;
		}
		s->loader = MyProcPid;
		s->delta = 0;
		LWLockRelease(budget_shared->lock);
		ConditionVariableCancelSleep();

		if (!ExitRegistered)
		{
			before_shmem_exit(budget_exit, (Datum) 0);
			ExitRegistered = true;
		}
		LoadingIdx = idx;
		loaded_at = GetCurrentTimestamp();
		PG_TRY();
		{
			ledger_sums(b, start, &spent, &pending);
		}
		PG_CATCH();
		{
			load_abandon(idx);
			PG_RE_THROW();
		}
		PG_END_TRY();

		LWLockAcquire(budget_shared->lock, LW_EXCLUSIVE);
		s = &budget_shared->states[idx];
		if (s->loader == MyProcPid && s->dboid == MyDatabaseId && s->id == b->id &&
			s->period_start == start && s->scope == b->scope)
		{
			s->spent = nano_add(spent, s->delta);
			s->inflight = pending;
			s->loaded_at = loaded_at;
			s->loaded = true;
		}
		LWLockRelease(budget_shared->lock);
		load_abandon(idx);
	}
}

/* Does budget `b` apply to this call? */
static bool
applies(BudgetConf *b, const char *tenant, const char *prompt, const char *model)
{
	return strcmp(b->tenant, tenant) == 0 &&
		(b->prompt == NULL || (prompt && prompt[0] && strcmp(b->prompt, prompt) == 0)) &&
		(b->model == NULL || (model && model[0] && strcmp(b->model, model) == 0));
}

/*
 * Load the counters of budgets conf[0..n) for the current period and
 * return with the lock held exclusively and st[] set, every one loaded.
 */
static void
lock_loaded(BudgetConf **conf, int n, BudgetState **st, TimestampTz now)
{
	bool		all_loaded = false;

	/*
	 * The ledger is summed only once its worker serves: after a crash it
	 * first writes again the rows that WAL holds (walledger.c).
	 */
	if (n > 0)
		(void) ledger_attach();
	while (!all_loaded)
	{
		for (int i = 0; i < n; i++)
			ensure_loaded(conf[i], now);
		LWLockAcquire(budget_shared->lock, LW_EXCLUSIVE);
		all_loaded = true;
		for (int i = 0; i < n && all_loaded; i++)
		{
			st[i] = state_for(conf[i]);
			all_loaded = st[i]->loaded;
		}
		if (!all_loaded)
		{
			/* a period began, or a scope changed, meanwhile: load again */
			LWLockRelease(budget_shared->lock);
			CHECK_FOR_INTERRUPTS();
			now = GetCurrentTimestamp();
		}
	}
}

/*
 * An envelope: one reservation for several calls that belong together
 * (maester.ask: the question's embedding, then the answer), taken before
 * the first is sent, so that a concurrent spender cannot let the first
 * through and block the second.  Each call of this backend for the
 * envelope's tenant then reserves as usual, but what the envelope holds
 * in a budget pays for its reservation there first; what is left goes
 * back when the envelope is closed: by its owner, or when the resource
 * owner it was opened under is released -- the statement's portal, or a
 * subtransaction's owner, at the latest the transaction's (so a session
 * cannot keep it while it idles in a transaction, and an error gives it
 * back) -- or at exit.  Only blocking budgets are held: a warn
 * budget never refuses and a downgrade budget changes the call, not the
 * envelope.  Backend-local; one at a time.
 */
typedef struct BudgetEnvelope
{
	bool		open;
	ResourceOwner owner;		/* opened under it: the statement's portal,
								 * normally */
	char		tenant[BUDGET_SCOPE_LEN];
	int			n;
	int			idx[BUDGET_MAX_APPLICABLE];
	int64		ids[BUDGET_MAX_APPLICABLE];
	int64		left[BUDGET_MAX_APPLICABLE];	/* nano-dollars still held */
} BudgetEnvelope;

static BudgetEnvelope Envelope;
static bool EnvelopeCallbacks = false;

/* What the envelope still holds in state `s` for a call of `tenant`; lock held */
static int64
envelope_held(BudgetState *s, const char *tenant, int *j)
{
	if (!Envelope.open || strcmp(Envelope.tenant, tenant) != 0)
		return 0;
	for (int i = 0; i < Envelope.n; i++)
		if (Envelope.idx[i] == s - budget_shared->states && Envelope.ids[i] == s->id &&
			s->dboid == MyDatabaseId)
		{
			*j = i;
			return Envelope.left[i];
		}
	return 0;
}

/* How much of a reservation of `est` in `s` the envelope pays; lock held */
static int64
envelope_take(BudgetState *s, const char *tenant, int64 est)
{
	int			j;

	return Min(envelope_held(s, tenant, &j), est);
}

/* The envelope gives `take` of what it holds in `s` to a call; lock held */
static void
envelope_spend(BudgetState *s, int64 take)
{
	int			j;

	if (take > 0 && envelope_held(s, Envelope.tenant, &j) >= take)
		Envelope.left[j] -= take;
}

/*
 * Give back what the envelope still holds.  No catalog access and no
 * error: it also serves the abort and exit paths.
 */
void
budget_envelope_close(void)
{
	if (!Envelope.open)
		return;
	Envelope.open = false;
	if (budget_shared == NULL)
		return;
	LWLockAcquire(budget_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < Envelope.n; i++)
	{
		BudgetState *s = &budget_shared->states[Envelope.idx[i]];

		if (s->dboid == MyDatabaseId && s->id == Envelope.ids[i])
			s->reserved = nano_sub_floor(s->reserved, Envelope.left[i]);
	}
	LWLockRelease(budget_shared->lock);
	Envelope.n = 0;
}

/* A resource owner is released (with itself as CurrentResourceOwner) */
static void
envelope_resowner_callback(ResourceReleasePhase phase, bool isCommit, bool isTopLevel,
						   void *arg)
{
	if (phase == RESOURCE_RELEASE_AFTER_LOCKS && Envelope.open &&
		CurrentResourceOwner == Envelope.owner)
		budget_envelope_close();
}

/* Does budget `b` apply to part `p` of an envelope? */
static bool
applies_part(BudgetConf *b, const BudgetPart *p)
{
	return (b->prompt == NULL || (p->prompt && strcmp(b->prompt, p->prompt) == 0)) &&
		(b->model == NULL || (p->model && strcmp(b->model, p->model) == 0));
}

/*
 * Open an envelope for `tenant`: in each blocking budget of the tenant,
 * reserve what the parts it applies to may cost at worst, or raise MB001
 * (`what` names the calls in the message's detail, `hint` is the hint) and
 * reserve nothing.  A part with no price (estimate NULL) is refused by a
 * blocking budget as its call would be, unless
 * maester.budget_allow_unpriced.  Closes an envelope still open first.
 */
void
budget_envelope_open(const char *tenant, const BudgetPart *parts, int nparts,
					 const char *what, const char *hint)
{
	TimestampTz now = GetCurrentTimestamp();
	BudgetConf *conf[BUDGET_MAX_APPLICABLE];
	BudgetState *st[BUDGET_MAX_APPLICABLE];
	int64		share[BUDGET_MAX_APPLICABLE];
	int			n = 0;

	budget_envelope_close();
	if (CurrentResourceOwner == NULL)
		elog(ERROR, "a budget envelope needs a resource owner");
	if (!EnvelopeCallbacks)
	{
		RegisterResourceReleaseCallback(envelope_resowner_callback, NULL);
		EnvelopeCallbacks = true;
	}
	if (!ExitRegistered)
	{
		before_shmem_exit(budget_exit, (Datum) 0);
		ExitRegistered = true;
	}
	budget_fresh();
	for (int i = 0; i < nbudgets && n < BUDGET_MAX_APPLICABLE; i++)
	{
		BudgetConf *b = &budgets[i];
		int64		sum = 0;

		if (b->action != 'b' || strcmp(b->tenant, tenant) != 0)
			continue;
		for (int p = 0; p < nparts; p++)
		{
			if (!applies_part(b, &parts[p]))
				continue;
			if (parts[p].estimate == NULL && !maester_budget_allow_unpriced)
				ereport(ERROR,
						(errcode(ERRCODE_MAESTER_BUDGET_EXCEEDED),
						 errmsg("budget %lld of tenant \"%s\" blocks model \"%s\", which has no price",
								(long long) b->id, tenant, parts[p].model ? parts[p].model : "?"),
						 errdetail("A budget cannot bound the cost of an unpriced model; nothing was sent."),
						 errhint("Add the model's price to maester.price, or set maester.budget_allow_unpriced.")));
			if (parts[p].estimate != NULL)
				sum = nano_add(sum, usd_to_nano(parts[p].estimate));
		}
		if (sum > 0)
		{
			share[n] = sum;
			conf[n++] = b;
		}
	}
	if (n == 0)
		return;

	lock_loaded(conf, n, st, now);
	for (int i = 0; i < n; i++)
	{
		BudgetState *s = st[i];
		int64		used = nano_add(nano_add(s->spent, s->reserved), s->inflight);

		if (nano_add(used, share[i]) > conf[i]->limit)
		{
			int64		spent = s->spent;

			LWLockRelease(budget_shared->lock);
			ereport(ERROR,
					(errcode(ERRCODE_MAESTER_BUDGET_EXCEEDED),
					 errmsg("budget %lld of tenant \"%s\" would be exceeded by %s USD at worst",
							(long long) conf[i]->id, tenant,
							nano_text(nano_add(used, share[i]) - conf[i]->limit)),
					 errdetail("Limit %s USD per %s; spent %s USD, reserved %s USD by calls in flight; %s could cost up to %s USD together. Nothing was sent.",
							   DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(conf[i]->limit_usd))),
							   conf[i]->period == 'd' ? "day" : conf[i]->period == 'm' ? "month" : "all time",
							   nano_text(spent), nano_text(used - spent), what, nano_text(share[i])),
					 hint ? errhint("%s", hint) : 0));
		}
	}
	for (int i = 0; i < n; i++)
	{
		st[i]->reserved = nano_add(st[i]->reserved, share[i]);
		Envelope.idx[i] = st[i] - budget_shared->states;
		Envelope.ids[i] = st[i]->id;
		Envelope.left[i] = share[i];
	}
	Envelope.n = n;
	strlcpy(Envelope.tenant, tenant, sizeof(Envelope.tenant));
	Envelope.owner = CurrentResourceOwner;
	Envelope.open = true;
	LWLockRelease(budget_shared->lock);
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
	BudgetConf *conf[BUDGET_MAX_APPLICABLE];
	BudgetState *st[BUDGET_MAX_APPLICABLE];
	int			n = 0;
	BudgetConf *violated = NULL;
	int64		v_spent = 0;
	int64		v_reserved = 0;
	int64		take[BUDGET_MAX_APPLICABLE];

	memset(hold, 0, sizeof(*hold));
	budget_fresh();
	est = estimate ? usd_to_nano(estimate) : 0;

	/* the call's scope: a budget created while it is in flight settles it too */
	strlcpy(hold->tenant, tenant, sizeof(hold->tenant));
	strlcpy(hold->prompt, prompt ? prompt : "", sizeof(hold->prompt));
	strlcpy(hold->model, model ? model : "", sizeof(hold->model));
	hold->estimate = est;
	hold->reserved_at = now;

	for (int i = 0; i < nbudgets && n < BUDGET_MAX_APPLICABLE; i++)
		if (applies(&budgets[i], tenant, prompt, model))
			conf[n++] = &budgets[i];
	if (n == 0)
		return BUDGET_OK;

	if (estimate == NULL && !maester_budget_allow_unpriced)
		violated = conf[0];

	/* check and reserve together, once every counter is loaded */
	lock_loaded(conf, n, st, now);
	for (int i = 0; i < n; i++)
		take[i] = envelope_take(st[i], tenant, est);
	for (int i = 0; i < n && violated == NULL; i++)
	{
		BudgetState *s = st[i];
		int64		total = nano_sub_floor(nano_add(nano_add(nano_add(s->spent, s->reserved), s->inflight), est),
										   take[i]);

		if (conf[i]->action != 'w' && total > conf[i]->limit)
		{
			violated = conf[i];
			v_spent = s->spent;
			v_reserved = nano_add(s->reserved, s->inflight);
		}
	}
	if (violated == NULL)
	{
		for (int i = 0; i < n; i++)
		{
			BudgetState *s = st[i];

			if (conf[i]->action == 'w' &&
				nano_add(nano_add(nano_add(s->spent, s->reserved), s->inflight), est) > conf[i]->limit)
				hold->warn_id = conf[i]->id;
			/* what the ask's envelope held for this call becomes the call's */
			envelope_spend(s, take[i]);
			s->reserved = nano_add(nano_sub_floor(s->reserved, take[i]), est);
			hold->idx[hold->n] = s - budget_shared->states;
			hold->ids[hold->n] = s->id;
			hold->n++;
		}
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
	hold->tenant[0] = '\0';		/* nothing to settle */
	if (violated->action == 'd' && violated->downgrade_model &&
		strcmp(router_model_identity(violated->downgrade_model), model) != 0)
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
			 errmsg("budget %lld of tenant \"%s\" would be exceeded by %s USD",
					(long long) violated->id, tenant,
					nano_text(nano_add(nano_add(v_spent, v_reserved), est) - violated->limit)),
			 errdetail("Limit %s USD per %s; spent %s USD, reserved %s USD by calls in flight; this call could cost up to %s USD. Nothing was sent.",
					   DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(violated->limit_usd))),
					   violated->period == 'd' ? "day" : violated->period == 'm' ? "month" : "all time",
					   nano_text(v_spent), nano_text(v_reserved), nano_text(est))));
	return BUDGET_OK;			/* keep compiler quiet */
}

/* The PENDING row of the hold's attempt is durable (see budget_credit) */
void
budget_hold_durable(BudgetHold *hold)
{
	hold->durable_at = GetCurrentTimestamp();
}

/*
 * Count `cost` in state `s` for a settled attempt; lock held.  A load that
 * began after the attempt's PENDING row was durable counted its estimate
 * as in flight: that estimate goes.  (One that began earlier may have seen
 * the row or not; its estimate then stays, over-counting, never under.)
 */
static void
budget_credit(BudgetState *s, const BudgetHold *hold, int64 cost)
{
	if (hold->durable_at != 0 && s->loaded_at > hold->durable_at &&
		hold->reserved_at >= s->period_start)
		s->inflight = nano_sub_floor(s->inflight, hold->estimate);
	if (s->loader != 0)
		s->delta = nano_add(s->delta, cost);
	s->spent = nano_add(s->spent, cost);
}

/*
 * Settle a hold at `cost` nano-dollars: its reservations are replaced by
 * the cost, and budgets that apply to its call without holding it
 * (created, or first loaded, while it was in flight) count the cost too.
 * Uses this backend's list of budgets as it is: no catalog access, no
 * error, so it also serves the error and exit paths.
 */
static void
settle(BudgetHold *hold, int64 cost)
{
	int64		other[BUDGET_MAX_APPLICABLE];
	int			nother = 0;

	if (hold->tenant[0] == '\0' || budget_shared == NULL)
		return;
	for (int i = 0; i < nbudgets && nother < BUDGET_MAX_APPLICABLE; i++)
	{
		bool		held = false;

		if (!applies(&budgets[i], hold->tenant, hold->prompt, hold->model))
			continue;
		for (int j = 0; j < hold->n && !held; j++)
			held = hold->ids[j] == budgets[i].id;
		if (!held)
			other[nother++] = budgets[i].id;
	}
	if (hold->n > 0 || nother > 0)
	{
		LWLockAcquire(budget_shared->lock, LW_EXCLUSIVE);
		for (int i = 0; i < hold->n; i++)
		{
			BudgetState *s = &budget_shared->states[hold->idx[i]];

			if (s->dboid != MyDatabaseId || s->id != hold->ids[i])
				continue;		/* the budget was deleted and its state reused */
			s->reserved = nano_sub_floor(s->reserved, hold->estimate);
			budget_credit(s, hold, cost);
		}
		for (int i = 0; i < nother; i++)
		{
			BudgetState *s = state_find(other[i]);

			if (s != NULL && (s->loaded || s->loader != 0))
				budget_credit(s, hold, cost);
		}
		LWLockRelease(budget_shared->lock);
	}
	hold->n = 0;
	hold->tenant[0] = '\0';
}

/*
 * Replace a hold's reservation by what the attempt cost (`actual`, NULL:
 * unpriced, counted as 0).  Safe to call on a zero hold, or twice.
 */
void
budget_settle(BudgetHold *hold, Numeric actual)
{
	settle(hold, actual ? usd_to_nano(actual) : 0);
}

/* Settle a hold at its estimate, without numerics (exit and error paths) */
void
budget_settle_at_estimate(BudgetHold *hold)
{
	settle(hold, hold->estimate);
}

PG_FUNCTION_INFO_V1(budget_counters);
/*
 * maester.budget_counters() RETURNS SETOF (id, period_start, spent_usd,
 * reserved_usd, loaded): the shared counters of this database's budgets
 * (for users and readers, of their tenant's budgets only).
 */
Datum
budget_counters(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	BudgetState *copy;
	int			n;
	const char *tenant = NULL;	/* a non-admin sees its tenant's budgets */

	maester_check_catalog();
	maester_require_preload();
	if (!maester_is_admin(GetUserId()))
		tenant = maester_current_tenant();
	budget_fresh();
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
		if (tenant != NULL)
		{
			BudgetConf *b = budget_conf(copy[i].id);

			if (b == NULL || strcmp(b->tenant, tenant) != 0)
				continue;
		}
		values[0] = Int64GetDatum(copy[i].id);
		values[1] = TimestampTzGetDatum(copy[i].period_start);
		nulls[1] = copy[i].period_start == 0;
		values[2] = NumericGetDatum(nano_to_usd(copy[i].spent));
		values[3] = NumericGetDatum(nano_to_usd(nano_add(copy[i].reserved, copy[i].inflight)));
		values[4] = BoolGetDatum(copy[i].loaded);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*-------------------------------------------------------------------------
 *
 * circuit.c
 *	  Circuit breakers and rate pacing, in shared memory, per database:
 *	  one database's failures or traffic never touch another's.
 *
 * Circuit breaker, per database, provider and model: after
 * circuit_failure_threshold consecutive failures of a model that say
 * something about its health (5xx, 429, timeouts of the provider's own
 * timeout, connection and protocol errors), the circuit opens and calls
 * skip that provider's model for circuit_cooldown_ms; then one call is
 * let through as a probe (half-open): success closes the circuit, failure
 * opens it again.  A probe whose backend died is given up after another
 * cooldown.  The provider's other models are not affected.  A timeout
 * that was the caller's own shorter deadline (options.timeout_ms below
 * the provider's timeout_ms) says nothing of the provider and is not
 * counted (machine.c).
 *
 * Rate pacing, per database and provider: see rate_reserve().
 *
 * Shared memory: one table of maester.max_providers entries -- one per
 * (database, provider) for pacing, one per (database, provider, model)
 * for the breaker -- protected by one LWLock of our own tranche, taken
 * exclusively for a few instructions.  When the table is full, the idle
 * entry used longest ago (closed, no failures, no pacing ahead) is
 * reused; the entries of a database that is gone are freed with its slot.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "circuit.h"
#include "maester.h"
#include "settings.h"
#include "util.h"

typedef enum CircuitState
{
	CIRCUIT_CLOSED = 0,			/* calls go through */
	CIRCUIT_OPEN,				/* calls are skipped until the cooldown ends */
	CIRCUIT_HALF_OPEN			/* one probe call is under way */
} CircuitState;

typedef struct MaesterCircuit
{
	Oid			dboid;			/* InvalidOid: free */
	char		provider[MAESTER_PROVIDER_NAMELEN];
	char		model[MAESTER_PROVIDER_NAMELEN];	/* "": the pacing entry */
	TimestampTz last_used;
	CircuitState state;
	int			consecutive_failures;
	TimestampTz opened_at;		/* when it last opened */
	TimestampTz probe_started;	/* when the half-open probe started */
	int64		successes;
	int64		failures;
	int64		opens;
	TimestampTz rate_requests_at;	/* rate pacing: next free request slot */
	TimestampTz rate_tokens_at;	/* and token slot */
} MaesterCircuit;

typedef struct CircuitShared
{
	LWLock	   *lock;
	int			ncircuits;		/* high-water mark */
	int			maxcircuits;
	MaesterCircuit circuits[FLEXIBLE_ARRAY_MEMBER];
} CircuitShared;

static CircuitShared *circuit_shared = NULL;

Size
circuit_shmem_size(void)
{
	return add_size(offsetof(CircuitShared, circuits),
					mul_size(sizeof(MaesterCircuit), maester_max_providers));
}

/* Called from the shmem startup hook, under AddinShmemInitLock */
void
circuit_shmem_init(void)
{
	bool		found;

	circuit_shared = ShmemInitStruct("maester", circuit_shmem_size(), &found);
	if (!found)
	{
		memset(circuit_shared, 0, circuit_shmem_size());
		circuit_shared->lock = &(GetNamedLWLockTranche("maester"))->lock;
		circuit_shared->maxcircuits = maester_max_providers;
	}
}

/* Nothing in it that a fresh entry would not have */
static bool
circuit_idle(MaesterCircuit *c, TimestampTz now)
{
	return c->state == CIRCUIT_CLOSED && c->consecutive_failures == 0 &&
		c->rate_requests_at <= now && c->rate_tokens_at <= now;
}

/*
 * Reusable when nothing else is: a closed circuit that only counts
 * failures, with no pacing ahead.  (Entries with failures must not pin the
 * table: failing calls to made-up model names would fill it, and every
 * rate limit would then go unpaced.)  Open circuits and schedules ahead
 * are kept.
 */
static bool
circuit_evictable(MaesterCircuit *c, TimestampTz now)
{
	return c->state == CIRCUIT_CLOSED &&
		c->rate_requests_at <= now && c->rate_tokens_at <= now;
}

/*
 * The entry of (this database, provider, model) -- model NULL: the
 * provider's pacing entry; provider "": a tenant's, model its name --,
 * created if need be; lock held exclusively.
 * NULL when the table is full of entries in use (no breaker, no pacing).
 */
static MaesterCircuit *
circuit_entry(const char *provider, const char *model)
{
	CircuitShared *s = circuit_shared;
	char		p[MAESTER_PROVIDER_NAMELEN];
	char		m[MAESTER_PROVIDER_NAMELEN];
	MaesterCircuit *c = NULL;
	MaesterCircuit *reuse = NULL;
	MaesterCircuit *evict = NULL;
	TimestampTz now = GetCurrentTimestamp();

	/* compare as stored: cut to the entry's size */
	strlcpy(p, provider, sizeof(p));
	strlcpy(m, model ? model : "", sizeof(m));
	for (int i = 0; i < s->ncircuits; i++)
	{
		MaesterCircuit *e = &s->circuits[i];

		if (e->dboid == MyDatabaseId && strcmp(e->provider, p) == 0 && strcmp(e->model, m) == 0)
		{
			e->last_used = now;
			return e;
		}
		if (e->dboid == InvalidOid)
		{
			if (reuse == NULL || reuse->dboid != InvalidOid)
				reuse = e;
		}
		else if (circuit_idle(e, now) && (reuse == NULL ||
										  (reuse->dboid != InvalidOid && e->last_used < reuse->last_used)))
			reuse = e;
		else if (circuit_evictable(e, now) &&
				 (evict == NULL || e->last_used < evict->last_used))
			evict = e;
	}
	if (reuse == NULL)
		reuse = evict;
	if (s->ncircuits < s->maxcircuits && (reuse == NULL || reuse->dboid != InvalidOid))
		c = &s->circuits[s->ncircuits++];
	else
		c = reuse;
	if (c == NULL)
		return NULL;
	memset(c, 0, sizeof(*c));
	c->dboid = MyDatabaseId;
	strlcpy(c->provider, p, sizeof(c->provider));
	strlcpy(c->model, m, sizeof(c->model));
	c->last_used = now;
	return c;
}

/* Free the entries of database `dboid` (it is gone) */
void
circuit_forget_database(Oid dboid)
{
	if (circuit_shared == NULL)
		return;
	LWLockAcquire(circuit_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < circuit_shared->ncircuits; i++)
		if (circuit_shared->circuits[i].dboid == dboid)
			circuit_shared->circuits[i].dboid = InvalidOid;
	LWLockRelease(circuit_shared->lock);
}

/*
 * Rate pacing.  A provider's requests_per_minute and tokens_per_minute are
 * honoured by spacing calls out, never by failing them: each attempt
 * reserves its place in the provider's schedule (GCRA: one theoretical
 * arrival time per limit, in shared memory, so every backend and worker
 * of the server shares it) and is told when it may start.  A request
 * takes 60 s / requests_per_minute of the schedule; its tokens (the input
 * estimate plus the output tokens reserved) take tokens * 60 s /
 * tokens_per_minute.  No burst allowance: after an idle period the first
 * call starts at once, and then calls are evenly spaced.  One call never
 * takes more than a minute of either budget.  A turn more than max_wait_us
 * away is not taken: false.  False too, with *turn DT_NOEND, when the
 * shared table has no room for the schedule (maester.max_providers): a
 * limit is never silently dropped.  Else true, with *turn the time at
 * which the call may start (0: now).
 */
static bool
pace(const char *provider, const char *model, int rpm, int tpm, int64 tokens,
	 int64 max_wait_us, TimestampTz *turn)
{
	MaesterCircuit *c;
	TimestampTz now;
	TimestampTz start;

	*turn = 0;
	if (rpm <= 0 && tpm <= 0)
		return true;
	now = GetCurrentTimestamp();
	if (tpm > 0)
		tokens = Min(Max(tokens, 1), (int64) tpm);
	LWLockAcquire(circuit_shared->lock, LW_EXCLUSIVE);
	c = circuit_entry(provider, model);
	if (c == NULL)
	{
		/* no room to keep the schedule: refuse rather than go unpaced */
		LWLockRelease(circuit_shared->lock);
		*turn = DT_NOEND;
		return false;
	}
	start = now;
	if (rpm > 0)
		start = Max(start, c->rate_requests_at);
	if (tpm > 0)
		start = Max(start, c->rate_tokens_at);
	if (start - now > max_wait_us)
	{
		LWLockRelease(circuit_shared->lock);
		return false;
	}
	if (rpm > 0)
		c->rate_requests_at = start + USECS_PER_MINUTE / rpm;
	if (tpm > 0)
		c->rate_tokens_at = start +
			(TimestampTz) ((double) tokens * USECS_PER_MINUTE / tpm);
	LWLockRelease(circuit_shared->lock);
	*turn = start > now ? start : 0;
	return true;
}

/* A provider's pacing: see above */
bool
rate_reserve(ProviderConf *p, int64 tokens, int64 max_wait_us, TimestampTz *turn)
{
	return pace(p->name, NULL, p->requests_per_minute, p->tokens_per_minute,
				tokens, max_wait_us, turn);
}

/*
 * A tenant's pacing (maester.tenant_limit), the same way, in an entry of
 * its own (provider "", which no provider is named: its model field holds
 * the tenant), so that one tenant waiting for its turn never delays
 * another's calls.
 */
bool
tenant_rate_reserve(const char *tenant, int requests_per_minute, int tokens_per_minute,
					int64 tokens, int64 max_wait_us, TimestampTz *turn)
{
	return pace("", tenant, requests_per_minute, tokens_per_minute,
				tokens, max_wait_us, turn);
}

/* May we call `model` of provider `p` now?  See the header comment */
CircuitAdmit
circuit_admit(ProviderConf *p, const char *model)
{
	MaesterCircuit *c;
	CircuitAdmit result = CIRCUIT_ADMIT;
	TimestampTz now;

	if (p->circuit_failure_threshold <= 0)
		return CIRCUIT_ADMIT;
	now = GetCurrentTimestamp();
	LWLockAcquire(circuit_shared->lock, LW_EXCLUSIVE);
	c = circuit_entry(p->name, model);
	if (c != NULL && c->state != CIRCUIT_CLOSED)
	{
		TimestampTz since = c->state == CIRCUIT_OPEN ? c->opened_at : c->probe_started;

		if (TimestampDifferenceExceeds(since, now, p->circuit_cooldown_ms))
		{
			c->state = CIRCUIT_HALF_OPEN;
			c->probe_started = now;
			result = CIRCUIT_ADMIT_PROBE;
		}
		else
			result = CIRCUIT_SKIP;
	}
	LWLockRelease(circuit_shared->lock);
	return result;
}

/*
 * A probe was admitted but no outcome will be recorded (the call ended
 * before an answer, by its deadline or an error): reopen the circuit, so
 * that the next call after the cooldown probes again.
 */
void
circuit_release_probe(ProviderConf *p, const char *model)
{
	MaesterCircuit *c;

	LWLockAcquire(circuit_shared->lock, LW_EXCLUSIVE);
	c = circuit_entry(p->name, model);
	if (c != NULL && c->state == CIRCUIT_HALF_OPEN)
		c->state = CIRCUIT_OPEN;
	LWLockRelease(circuit_shared->lock);
}

/*
 * Record the outcome of a call to `model` of `p`.  `counts` says whether a
 * failure reflects the model's health (a 400 does not).
 */
void
circuit_record(ProviderConf *p, const char *model, bool success, bool counts)
{
	MaesterCircuit *c;

	LWLockAcquire(circuit_shared->lock, LW_EXCLUSIVE);
	c = circuit_entry(p->name, model);
	if (c != NULL)
	{
		if (success)
		{
			c->successes++;
			c->consecutive_failures = 0;
			c->state = CIRCUIT_CLOSED;
		}
		else if (counts)
		{
			c->failures++;
			c->consecutive_failures++;
			if (p->circuit_failure_threshold > 0 &&
				(c->state == CIRCUIT_HALF_OPEN ||
				 (c->state == CIRCUIT_CLOSED &&
				  c->consecutive_failures >= p->circuit_failure_threshold)))
			{
				c->state = CIRCUIT_OPEN;
				c->opened_at = GetCurrentTimestamp();
				c->opens++;
			}
		}
		else if (c->state == CIRCUIT_HALF_OPEN)
		{
			/* the probe got an answer, just not a good one: the provider is up */
			c->state = CIRCUIT_CLOSED;
			c->consecutive_failures = 0;
		}
	}
	LWLockRelease(circuit_shared->lock);
}

PG_FUNCTION_INFO_V1(circuit_status);
/*
 * maester.circuit_status() RETURNS SETOF record: the breaker of every
 * provider and model this database called since the server started (the
 * maester.circuit view).
 */
Datum
circuit_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MaesterCircuit *copy;
	int			n;

	maester_check_catalog();
	maester_require_preload();
	InitMaterializedSRF(fcinfo, 0);

	LWLockAcquire(circuit_shared->lock, LW_SHARED);
	n = circuit_shared->ncircuits;
	copy = palloc(sizeof(MaesterCircuit) * Max(n, 1));
	memcpy(copy, circuit_shared->circuits, sizeof(MaesterCircuit) * n);
	LWLockRelease(circuit_shared->lock);

	for (int i = 0; i < n; i++)
	{
		Datum		values[8];
		bool		nulls[8] = {false, false, false, false, false, false, false, false};
		const char *state = copy[i].state == CIRCUIT_OPEN ? "open" :
		copy[i].state == CIRCUIT_HALF_OPEN ? "half_open" : "closed";

		if (copy[i].dboid != MyDatabaseId || copy[i].model[0] == '\0' ||
			copy[i].provider[0] == '\0')
			continue;
		values[0] = CStringGetTextDatum(copy[i].provider);
		values[1] = CStringGetTextDatum(copy[i].model);
		values[2] = CStringGetTextDatum(state);
		values[3] = Int32GetDatum(copy[i].consecutive_failures);
		if (copy[i].opened_at != 0)
			values[4] = TimestampTzGetDatum(copy[i].opened_at);
		else
			nulls[4] = true;
		values[5] = Int64GetDatum(copy[i].successes);
		values[6] = Int64GetDatum(copy[i].failures);
		values[7] = Int64GetDatum(copy[i].opens);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(circuit_reset);
/*
 * maester.circuit_reset(provider text DEFAULT NULL, model text DEFAULT
 * NULL) RETURNS integer: close the circuits of this database's provider
 * (NULL: all) and model (NULL: all of its models); returns how many.
 */
Datum
circuit_reset(PG_FUNCTION_ARGS)
{
	int			count = 0;
	char	   *name = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *model = PG_NARGS() < 2 || PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));

	maester_check_catalog();
	maester_require_preload();
	LWLockAcquire(circuit_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < circuit_shared->ncircuits; i++)
	{
		MaesterCircuit *c = &circuit_shared->circuits[i];

		if (c->dboid != MyDatabaseId || c->model[0] == '\0' || c->provider[0] == '\0')
			continue;
		if (name && strncmp(c->provider, name, MAESTER_PROVIDER_NAMELEN - 1) != 0)
			continue;
		if (model && strncmp(c->model, model, MAESTER_PROVIDER_NAMELEN - 1) != 0)
			continue;
		c->state = CIRCUIT_CLOSED;
		c->consecutive_failures = 0;
		count++;
	}
	LWLockRelease(circuit_shared->lock);
	PG_RETURN_INT32(count);
}

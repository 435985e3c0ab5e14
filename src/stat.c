/*-------------------------------------------------------------------------
 *
 * stat.c
 *	  Live statistics per provider and model in shared memory, as
 *	  pg_stat_statements keeps them per statement: maester.stat.
 *
 * One entry per (database, provider, model), created on first use, in a
 * fixed array of maester.max_stat_entries protected by one LWLock (held
 * exclusively for a few additions per call).  Counters: calls, errors,
 * attempts, retries, fallbacks, tokens, cost (nano-dollars), errors by
 * class, and a latency histogram of whole calls with four buckets per
 * octave of microseconds, from which p50/p95/p99 are read (to within 19%).
 * maester.stat_reset() zeroes the entries of the current database.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "catalog.h"
#include "router.h"
#include "settings.h"
#include "stat.h"
#include "util.h"

#define STAT_NAMELEN 128
#define STAT_SUBBUCKETS 4		/* per octave */
#define STAT_BUCKETS (32 * STAT_SUBBUCKETS)
#define STAT_RECENT_WEIGHT 0.2	/* of the latest call in the moving averages */

static const char *const error_classes[] = {
	"rate_limited", "server_error", "overloaded", "auth", "not_found",
	"bad_request", "redirect", "timeout", "connection", "network",
	"bad_response", "too_large", "internal", "cancelled", "other"
};

#define N_CLASSES lengthof(error_classes)

typedef struct StatEntry
{
	Oid			dboid;
	char		provider[STAT_NAMELEN];
	char		model[STAT_NAMELEN];
	int64		calls;
	int64		errors;			/* calls that failed */
	int64		attempts;
	int64		retries;
	int64		fallbacks;
	int64		input_tokens;
	int64		output_tokens;
	int64		cost_nano;
	int64		class_errors[N_CLASSES];	/* failed attempts by class */
	int64		latency[STAT_BUCKETS];	/* calls by latency bucket */
	/* recent behaviour, for route strategies (strategy.c) */
	double		recent_ms;		/* moving average of successful calls' latency */
	double		recent_failing; /* moving average of failure (0 or 1 an attempt) */
	int64		recent_ok;		/* successful calls in the average */
} StatEntry;

typedef struct StatShared
{
	LWLock	   *lock;
	int			max;
	int			n;
	StatEntry	entries[FLEXIBLE_ARRAY_MEMBER];
} StatShared;

static StatShared *stat_shared = NULL;

Size
stat_shmem_size(void)
{
	return add_size(offsetof(StatShared, entries),
					mul_size(sizeof(StatEntry), maester_max_stat_entries));
}

void
stat_shmem_init(void)
{
	bool		found;

	stat_shared = ShmemInitStruct("maester stat", stat_shmem_size(), &found);
	if (!found)
	{
		stat_shared->lock = &(GetNamedLWLockTranche("maester stat"))->lock;
		stat_shared->max = maester_max_stat_entries;
		stat_shared->n = 0;
	}
}

/* The entry for (provider, model) in this database; lock held; NULL if full */
static StatEntry *
stat_entry(const char *provider, const char *model)
{
	char		p[STAT_NAMELEN];
	char		m[STAT_NAMELEN];
	StatEntry  *e;

	strlcpy(p, provider ? provider : "", sizeof(p));
	strlcpy(m, model ? model : "", sizeof(m));
	for (int i = 0; i < stat_shared->n; i++)
	{
		e = &stat_shared->entries[i];
		if (e->dboid == MyDatabaseId && strcmp(e->provider, p) == 0 && strcmp(e->model, m) == 0)
			return e;
	}
	if (stat_shared->n >= stat_shared->max)
		return NULL;
	e = &stat_shared->entries[stat_shared->n++];
	memset(e, 0, sizeof(*e));
	e->dboid = MyDatabaseId;
	strlcpy(e->provider, p, sizeof(e->provider));
	strlcpy(e->model, m, sizeof(e->model));
	return e;
}

static int
class_index(const char *cls)
{
	for (int i = 0; i < (int) N_CLASSES - 1; i++)
		if (cls && strcmp(cls, error_classes[i]) == 0)
			return i;
	return N_CLASSES - 1;
}

static int
latency_bucket(double ms)
{
	double		us = ms * 1000.0;
	int			b;

	if (us < 1)
		return 0;
	b = (int) floor(log2(us) * STAT_SUBBUCKETS);
	return Min(Max(b, 0), STAT_BUCKETS - 1);
}

/* One attempt ended: `error_class` NULL for success; `cost` NULL if none */
void
stat_attempt(const char *provider, const char *model, const char *error_class,
			 int64 input_tokens, int64 output_tokens, Numeric cost)
{
	StatEntry  *e;
	int64		cost_nano = 0;

	if (stat_shared == NULL)
		return;
	if (cost)
		cost_nano = DatumGetInt64(DirectFunctionCall1(numeric_int8,
													  DirectFunctionCall2(numeric_round,
																		  DirectFunctionCall2(numeric_mul, NumericGetDatum(cost),
																							  DirectFunctionCall1(int8_numeric, Int64GetDatum(1000000000))),
																		  Int32GetDatum(0))));
	LWLockAcquire(stat_shared->lock, LW_EXCLUSIVE);
	e = stat_entry(provider, model);
	if (e)
	{
		e->attempts++;
		if (error_class)
			e->class_errors[class_index(error_class)]++;
		/* a failure of the caller's making (cancelled) says nothing of the model */
		if (error_class == NULL || strcmp(error_class, "cancelled") != 0)
			e->recent_failing += STAT_RECENT_WEIGHT * ((error_class ? 1.0 : 0.0) - e->recent_failing);
		e->input_tokens += input_tokens;
		e->output_tokens += output_tokens;
		e->cost_nano += cost_nano;
	}
	LWLockRelease(stat_shared->lock);
}

/* One call ended (on the provider and model that served it, or last tried) */
void
stat_call(const char *provider, const char *model, bool failed, int attempts,
		  bool fallback, double latency_ms)
{
	StatEntry  *e;

	if (stat_shared == NULL)
		return;
	LWLockAcquire(stat_shared->lock, LW_EXCLUSIVE);
	e = stat_entry(provider, model);
	if (e)
	{
		e->calls++;
		if (failed)
			e->errors++;
		e->retries += Max(attempts - 1, 0);
		if (fallback)
			e->fallbacks++;
		e->latency[latency_bucket(latency_ms)]++;
		if (!failed)
		{
			e->recent_ms = e->recent_ok == 0 ? latency_ms :
				e->recent_ms + STAT_RECENT_WEIGHT * (latency_ms - e->recent_ms);
			e->recent_ok++;
		}
	}
	LWLockRelease(stat_shared->lock);
}

/*
 * The recent behaviour of `model` (a target's model id) at `provider` in
 * this database: the moving average of its successful calls' latency (ms),
 * of its attempts' failures (0 to 1), and how many attempts it has seen.  Calls are
 * counted under the model that answered, which may be the id with a
 * snapshot suffix (gpt-4.1-mini-2025-04-14 for gpt-4.1-mini): the entry
 * with the most calls among those counts.  False when there is none.
 */
bool
stat_recent(const char *provider, const char *model, double *ms, double *failing,
			int64 *calls)
{
	StatEntry  *best = NULL;
	size_t		len = strlen(model);

	if (stat_shared == NULL)
		return false;
	LWLockAcquire(stat_shared->lock, LW_SHARED);
	for (int i = 0; i < stat_shared->n; i++)
	{
		StatEntry  *e = &stat_shared->entries[i];

		if (e->dboid != MyDatabaseId || strcmp(e->provider, provider) != 0 ||
			strncmp(e->model, model, len) != 0 ||
			(e->model[len] != '\0' &&
			 (e->model[len] != '-' || !model_snapshot_suffix(e->model + len + 1))))
			continue;
		if (best == NULL || e->attempts > best->attempts)
			best = e;
	}
	if (best != NULL)
	{
		*ms = best->recent_ok > 0 ? best->recent_ms : NAN;
		*failing = best->recent_failing;
		*calls = best->attempts;
	}
	LWLockRelease(stat_shared->lock);
	return best != NULL;
}

/* The latency (ms) at quantile q of a histogram: the bucket's midpoint */
static double
histogram_quantile(const int64 *h, double q)
{
	int64		total = 0;
	int64		seen = 0;

	for (int i = 0; i < STAT_BUCKETS; i++)
		total += h[i];
	if (total == 0)
		return NAN;
	for (int i = 0; i < STAT_BUCKETS; i++)
	{
		seen += h[i];
		if (seen >= q * total)
			return pow(2.0, (i + 0.5) / STAT_SUBBUCKETS) / 1000.0;
	}
	return NAN;
}

PG_FUNCTION_INFO_V1(stat_entries);
/* maester.stat_entries(): this database's entries (the maester.stat view) */
Datum
stat_entries(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	StatEntry  *copy;
	int			n;

	maester_check_catalog();
	maester_require_preload();
	InitMaterializedSRF(fcinfo, 0);
	LWLockAcquire(stat_shared->lock, LW_SHARED);
	n = stat_shared->n;
	copy = palloc(sizeof(StatEntry) * Max(n, 1));
	memcpy(copy, stat_shared->entries, sizeof(StatEntry) * n);
	LWLockRelease(stat_shared->lock);

	for (int i = 0; i < n; i++)
	{
		StatEntry  *e = &copy[i];
		Datum		values[14];
		bool		nulls[14];
		StringInfoData j;
		double		p;

		if (e->dboid != MyDatabaseId)
			continue;
		memset(nulls, 0, sizeof(nulls));
		values[0] = CStringGetTextDatum(e->provider);
		values[1] = CStringGetTextDatum(e->model);
		values[2] = Int64GetDatum(e->calls);
		values[3] = Int64GetDatum(e->errors);
		values[4] = Int64GetDatum(e->attempts);
		values[5] = Int64GetDatum(e->retries);
		values[6] = Int64GetDatum(e->fallbacks);
		initStringInfo(&j);
		appendStringInfoChar(&j, '{');
		for (int c = 0; c < (int) N_CLASSES; c++)
			if (e->class_errors[c])
				appendStringInfo(&j, "%s\"%s\": " INT64_FORMAT, j.len > 1 ? ", " : "",
								 error_classes[c], e->class_errors[c]);
		appendStringInfoChar(&j, '}');
		values[7] = DirectFunctionCall1(jsonb_in, CStringGetDatum(j.data));
		values[8] = Int64GetDatum(e->input_tokens);
		values[9] = Int64GetDatum(e->output_tokens);
		values[10] = DirectFunctionCall2(numeric_div,
										 DirectFunctionCall1(int8_numeric, Int64GetDatum(e->cost_nano)),
										 DirectFunctionCall1(int8_numeric, Int64GetDatum(1000000000)));
		values[10] = DirectFunctionCall1(numeric_trim_scale, values[10]);
		p = histogram_quantile(e->latency, 0.5);
		values[11] = Float8GetDatum(p);
		nulls[11] = isnan(p);
		p = histogram_quantile(e->latency, 0.95);
		values[12] = Float8GetDatum(p);
		nulls[12] = isnan(p);
		p = histogram_quantile(e->latency, 0.99);
		values[13] = Float8GetDatum(p);
		nulls[13] = isnan(p);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* Remove the entries of database `dboid`; returns how many */
static int
stat_drop(Oid dboid)
{
	int			count = 0;
	int			keep = 0;

	LWLockAcquire(stat_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < stat_shared->n; i++)
	{
		if (stat_shared->entries[i].dboid == dboid)
		{
			count++;
			continue;
		}
		if (keep != i)
			stat_shared->entries[keep] = stat_shared->entries[i];
		keep++;
	}
	stat_shared->n = keep;
	LWLockRelease(stat_shared->lock);
	return count;
}

/* The entries of a database that is gone (the launcher frees its slot) */
void
stat_forget_database(Oid dboid)
{
	if (stat_shared != NULL)
		(void) stat_drop(dboid);
}

PG_FUNCTION_INFO_V1(stat_reset);
/* maester.stat_reset(): zero this database's statistics; returns how many */
Datum
stat_reset(PG_FUNCTION_ARGS)
{
	maester_check_catalog();
	maester_require_preload();
	PG_RETURN_INT32(stat_drop(MyDatabaseId));
}

/*-------------------------------------------------------------------------
 *
 * router.c
 *	  Model and route resolution over a per-backend cache of the gateway's
 *	  configuration.
 *
 * Configuration cache.  maester.provider, maester.model, maester.route and
 * maester.route_target are small and read on every call, so each backend
 * keeps them in RouterContext.  As for the prompt registry, a statement
 * trigger on each table queues a relcache invalidation, which reaches every
 * backend at commit; our callback marks the cache stale and the next call
 * reloads it with the latest snapshot.  The tables are read as their owner,
 * so maester_user can call models without reading provider rows.
 *
 * Resolution of a requested model name, in order:
 *	 1. NULL: the route named "default";
 *	 2. a route of that name: its targets, in position order;
 *	 3. a maester.model row whose name or alias it is: that provider and id;
 *	 4. the first enabled provider (by priority, then name) one of whose
 *	    LIKE patterns matches: that provider, the name as given (when only
 *	    disabled providers match, MG005 as for the other paths);
 *	 5. otherwise 42704 -- never a silent substitution.
 *
 * A requested name is checked first (router_check_model_name), wherever it
 * comes from (an argument, a request object, a prompt version's config, a
 * rubric, a budget's downgrade): 1 to MODEL_NAME_MAX bytes, no control
 * characters, no "%".  It is only ever the subject of the providers' LIKE
 * patterns, never a pattern itself, so "%" could not act as a wildcard;
 * but no model id contains one, and a name with one is a mistake or a
 * probe, which a catch-all pattern would otherwise send on.  "_" is in
 * real model ids (and a literal in the subject), so it is allowed.
 *
 * Model identity.  One name stands for a model wherever prices and budgets
 * look: the maester.model row's name when a row covers the target (asked
 * for by its name or an alias, or a route target with the row's provider
 * and id), otherwise the model id without a snapshot date
 * (gpt-4.1-2025-04-14 is gpt-4.1; the date must be a real one).  A budget's
 * model is resolved the same way, so a budget on a model's name, alias or
 * id counts the calls made through any of them (router_model_identity).
 *
 * (The circuit breaker and rate pacing, which are shared by every backend,
 * are in circuit.c.)
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "storage/sinval.h"

#include "catalog.h"
#include "maester.h"
#include "router.h"
#include "util.h"

typedef struct ModelConf
{
	char	   *name;
	int			naliases;
	char	  **aliases;
	char	   *provider;
	char	   *provider_model;
	int			max_output_tokens;	/* 0: maester.max_output_tokens */
	int			refuses;		/* MODEL_NO_*, or -1: the rule's */
	char	   *output_limit_param; /* NULL: the kind's */
	char	   *structured_output;	/* native, tool, or NULL: the kind's */
	int			embedding_dimensions;	/* 0: not an embedding model (or unknown) */
	int			max_input_tokens;	/* 0: unknown */
} ModelConf;

typedef struct TenantLimit
{
	char	   *tenant;
	int			requests_per_minute;	/* 0: no limit */
	int			tokens_per_minute;
} TenantLimit;

typedef struct RouteConf
{
	char	   *name;
	int			ntargets;
	char	  **providers;
	char	  **models;
	int		   *weights;
	char	   *strategy;		/* route.strategy */
	bool		sticky_tenant;	/* route.sticky = 'tenant' */
} RouteConf;

static MemoryContext RouterContext = NULL;
static bool RouterStale = true;
static uint64 RouterLoads = 0;	/* bumped by loads and by invalidations */
static Oid	RouterRelids[5];
static int	nproviders;
static ProviderConf *providers;
static int	nmodels;
static ModelConf *models;
static int	nroutes;
static RouteConf *routes;
static int	ntenantlimits;
static TenantLimit *tenantlimits;

/* Relcache callback: any change to our configuration tables */
static void
router_cache_callback(Datum arg, Oid relid)
{
	bool		ours = relid == InvalidOid;

	for (int i = 0; i < lengthof(RouterRelids); i++)
		if (relid == RouterRelids[i])
			ours = true;
	if (ours)
	{
		RouterStale = true;
		RouterLoads++;
	}
}

void
router_init(void)
{
	CacheRegisterRelcacheCallback(router_cache_callback, (Datum) 0);
}

/* Run a read-only query with the latest snapshot; returns SPI_processed */
static uint64
load_query(const char *sql)
{
	SPIPlanPtr	plan = SPI_prepare(sql, 0, NULL);
	int			rc;

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	rc = SPI_execute_snapshot(plan, NULL, NULL, GetLatestSnapshot(),
							  InvalidSnapshot, true, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_snapshot failed: %s", SPI_result_code_string(rc));
	return SPI_processed;
}

static char *
col_string(HeapTuple tup, TupleDesc desc, int col)
{
	char	   *v = SPI_getvalue(tup, desc, col);

	return v ? MemoryContextStrdup(RouterContext, v) : NULL;
}

static int
col_int(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? 0 : DatumGetInt32(d);
}

/* Deconstruct a text[] column into palloc'd C strings in RouterContext */
static int
col_text_array(HeapTuple tup, TupleDesc desc, int col, char ***out)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			k = 0;

	*out = NULL;
	if (isnull)
		return 0;
	deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, &n);
	*out = MemoryContextAlloc(RouterContext, sizeof(char *) * Max(n, 1));
	for (int i = 0; i < n; i++)
		if (!nulls[i])
			(*out)[k++] = MemoryContextStrdup(RouterContext, TextDatumGetCString(elems[i]));
	return k;
}

/* (Re)load the configuration tables into RouterContext */
static void
router_load(void)
{
	Oid			nsp = get_namespace_oid("maester", false);
	OwnerScope	scope;
	uint64		loads_at_start;
	const char *tables[5] = {"provider", "model", "route", "route_target", "tenant_limit"};

	if (RouterContext == NULL)
		RouterContext = AllocSetContextCreate(TopMemoryContext,
											  "maester router cache",
											  ALLOCSET_SMALL_SIZES);
	MemoryContextReset(RouterContext);
	nproviders = nmodels = nroutes = ntenantlimits = 0;
	RouterStale = true;			/* until the load below completes */
	loads_at_start = ++RouterLoads;
	for (int i = 0; i < lengthof(tables); i++)
		RouterRelids[i] = get_relname_relid(tables[i], nsp);
	if (!OidIsValid(RouterRelids[0]))
		elog(ERROR, "table maester.provider not found");

	/* read as the owner, with a safe search_path (util.c) */
	maester_become_owner(RouterRelids[0], &scope);
	PG_TRY();
	{
		uint64		n;

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");

		n = load_query("SELECT p.name, p.kind, p.base_url, p.api_key_env, p.api_key_file, "
					   "p.models, p.connect_timeout_ms, p.timeout_ms, p.max_attempts, "
					   "p.backoff_base_ms, p.backoff_max_ms, p.circuit_failure_threshold, "
					   "p.circuit_cooldown_ms, p.anthropic_version, p.enabled, "
					   "p.max_connections, p.requests_per_minute, p.tokens_per_minute, "
					   "p.api_version, p.embedding_batch_tokens "
					   "FROM maester.provider p ORDER BY p.priority, p.name");
		providers = MemoryContextAllocZero(RouterContext, sizeof(ProviderConf) * Max(n, 1));
		for (uint64 i = 0; i < n; i++)
		{
			HeapTuple	t = SPI_tuptable->vals[i];
			TupleDesc	d = SPI_tuptable->tupdesc;
			ProviderConf *p = &providers[i];
			char	  **pats;
			bool		isnull;

			p->name = col_string(t, d, 1);
			p->ops = provider_ops(SPI_getvalue(t, d, 2));
			p->base_url = col_string(t, d, 3);
			p->api_key_env = col_string(t, d, 4);
			p->api_key_file = col_string(t, d, 5);
			p->npatterns = col_text_array(t, d, 6, &pats);
			p->patterns = MemoryContextAlloc(RouterContext, sizeof(text *) * Max(p->npatterns, 1));
			for (int k = 0; k < p->npatterns; k++)
			{
				MemoryContext old = MemoryContextSwitchTo(RouterContext);

				p->patterns[k] = cstring_to_text(pats[k]);
				MemoryContextSwitchTo(old);
			}
			p->connect_timeout_ms = col_int(t, d, 7);
			p->timeout_ms = col_int(t, d, 8);
			p->max_attempts = col_int(t, d, 9);
			p->backoff_base_ms = col_int(t, d, 10);
			p->backoff_max_ms = col_int(t, d, 11);
			p->circuit_failure_threshold = col_int(t, d, 12);
			p->circuit_cooldown_ms = col_int(t, d, 13);
			p->anthropic_version = col_string(t, d, 14);
			p->enabled = DatumGetBool(SPI_getbinval(t, d, 15, &isnull)) && !isnull;
			p->max_connections = col_int(t, d, 16);
			p->api_version = col_string(t, d, 19);
			p->embedding_batch_tokens = col_int(t, d, 20);
			p->requests_per_minute = col_int(t, d, 17);
			p->tokens_per_minute = col_int(t, d, 18);
		}
		nproviders = n;

		n = load_query("SELECT m.name, m.aliases, m.provider, m.provider_model, "
					   "COALESCE(m.max_output_tokens, 0), "
					   "CASE WHEN m.unsupported_params IS NULL THEN -1 ELSE "
					   "(CASE WHEN 'temperature' = ANY (m.unsupported_params) THEN 1 ELSE 0 END) + "
					   "(CASE WHEN 'top_p' = ANY (m.unsupported_params) THEN 2 ELSE 0 END) + "
					   "(CASE WHEN 'stop' = ANY (m.unsupported_params) THEN 4 ELSE 0 END) END, "
					   "m.output_limit_param, m.structured_output, m.embedding_dimensions, "
					   "COALESCE(m.max_input_tokens, 0) "
					   "FROM maester.model m ORDER BY m.name");
		models = MemoryContextAllocZero(RouterContext, sizeof(ModelConf) * Max(n, 1));
		for (uint64 i = 0; i < n; i++)
		{
			HeapTuple	t = SPI_tuptable->vals[i];
			TupleDesc	d = SPI_tuptable->tupdesc;

			models[i].name = col_string(t, d, 1);
			models[i].naliases = col_text_array(t, d, 2, &models[i].aliases);
			models[i].provider = col_string(t, d, 3);
			models[i].provider_model = col_string(t, d, 4);
			models[i].max_output_tokens = col_int(t, d, 5);
			models[i].refuses = col_int(t, d, 6);
			models[i].output_limit_param = col_string(t, d, 7);
			models[i].structured_output = col_string(t, d, 8);
			models[i].embedding_dimensions = col_int(t, d, 9);
			models[i].max_input_tokens = col_int(t, d, 10);
		}
		nmodels = n;

		n = load_query("SELECT l.tenant, COALESCE(l.requests_per_minute, 0), "
					   "COALESCE(l.tokens_per_minute, 0) FROM maester.tenant_limit l");
		tenantlimits = MemoryContextAllocZero(RouterContext, sizeof(TenantLimit) * Max(n, 1));
		for (uint64 i = 0; i < n; i++)
		{
			HeapTuple	t = SPI_tuptable->vals[i];
			TupleDesc	d = SPI_tuptable->tupdesc;

			tenantlimits[i].tenant = col_string(t, d, 1);
			tenantlimits[i].requests_per_minute = col_int(t, d, 2);
			tenantlimits[i].tokens_per_minute = col_int(t, d, 3);
		}
		ntenantlimits = n;

		n = load_query("SELECT r.name, "
					   "COALESCE(pg_catalog.array_agg(t.provider ORDER BY t.position) FILTER (WHERE t.provider IS NOT NULL), '{}'::pg_catalog.text[]), "
					   "COALESCE(pg_catalog.array_agg(t.model ORDER BY t.position) FILTER (WHERE t.provider IS NOT NULL), '{}'::pg_catalog.text[]), "
					   "COALESCE(pg_catalog.array_agg(t.weight::pg_catalog.text ORDER BY t.position) FILTER (WHERE t.provider IS NOT NULL), '{}'::pg_catalog.text[]), "
					   "r.strategy, r.sticky IS NOT NULL "
					   "FROM maester.route r LEFT JOIN maester.route_target t "
					   "ON t.route OPERATOR(pg_catalog.=) r.name GROUP BY r.name");
		routes = MemoryContextAllocZero(RouterContext, sizeof(RouteConf) * Max(n, 1));
		for (uint64 i = 0; i < n; i++)
		{
			HeapTuple	t = SPI_tuptable->vals[i];
			TupleDesc	d = SPI_tuptable->tupdesc;
			char	  **w;
			bool		isnull;

			routes[i].name = col_string(t, d, 1);
			routes[i].ntargets = col_text_array(t, d, 2, &routes[i].providers);
			(void) col_text_array(t, d, 3, &routes[i].models);
			(void) col_text_array(t, d, 4, &w);
			routes[i].weights = MemoryContextAlloc(RouterContext, sizeof(int) * Max(routes[i].ntargets, 1));
			for (int k = 0; k < routes[i].ntargets; k++)
				routes[i].weights[k] = atoi(w[k]);
			routes[i].strategy = col_string(t, d, 5);
			routes[i].sticky_tenant = DatumGetBool(SPI_getbinval(t, d, 6, &isnull));
		}
		nroutes = n;

		SPI_finish();
	}
	PG_FINALLY();
	{
		maester_restore_user(&scope);
	}
	PG_END_TRY();

	/* fresh, unless an invalidation arrived while loading */
	if (loads_at_start == RouterLoads)
		RouterStale = false;
}

static ProviderConf *
find_provider(const char *name)
{
	for (int i = 0; i < nproviders; i++)
		if (strcmp(providers[i].name, name) == 0)
			return &providers[i];
	return NULL;
}

/* The cache, reloaded if a committed change made it stale */
static void
router_fresh(void)
{
	AcceptInvalidationMessages();
	if (RouterStale)
		router_load();
}

/*
 * Is `s` a snapshot suffix: a real date as YYYY-MM-DD or YYYYMMDD (years
 * 2000-2099), or "latest"?
 */
bool
model_snapshot_suffix(const char *s)
{
	static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	char		d[8];
	int			n = strlen(s);
	int			y,
				m,
				day;

	if (strcmp(s, "latest") == 0)
		return true;
	if (n == 10 && s[4] == '-' && s[7] == '-')
	{
		memcpy(d, s, 4);
		memcpy(d + 4, s + 5, 2);
		memcpy(d + 6, s + 8, 2);
	}
	else if (n == 8)
		memcpy(d, s, 8);
	else
		return false;
	for (int i = 0; i < 8; i++)
		if (!isdigit((unsigned char) d[i]))
			return false;
	y = (d[0] - '0') * 1000 + (d[1] - '0') * 100 + (d[2] - '0') * 10 + (d[3] - '0');
	m = (d[4] - '0') * 10 + (d[5] - '0');
	day = (d[6] - '0') * 10 + (d[7] - '0');
	if (y < 2000 || y > 2099 || m < 1 || m > 12 || day < 1 || day > mdays[m - 1])
		return false;
	if (m == 2 && day == 29 && !(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)))
		return false;
	return true;
}

/* The length of `model` without a snapshot suffix ("-2025-04-14"), if any */
int
model_base_len(const char *model)
{
	int			n = strlen(model);

	if (n > 11 && model[n - 11] == '-' && model_snapshot_suffix(model + n - 10))
		return n - 11;
	if (n > 9 && model[n - 9] == '-' && model_snapshot_suffix(model + n - 8))
		return n - 9;
	if (n > 7 && strcmp(model + n - 7, "-latest") == 0)
		return n - 7;
	return n;
}

/*
 * Bumped whenever the configuration changes: a cache built from
 * identities (budget.c) is stale when this moved.
 */
uint64
router_generation(void)
{
	router_fresh();
	return RouterLoads;
}

/* The model row whose name or alias `name` is, or NULL */
static ModelConf *
model_by_name(const char *name)
{
	for (int i = 0; i < nmodels; i++)
	{
		if (strcmp(models[i].name, name) == 0)
			return &models[i];
		for (int k = 0; k < models[i].naliases; k++)
			if (strcmp(models[i].aliases[k], name) == 0)
				return &models[i];
	}
	return NULL;
}

/* The model row sending `id` to `provider` (any provider: NULL), or NULL */
static ModelConf *
model_by_id(const char *provider, const char *id)
{
	for (int i = 0; i < nmodels; i++)
		if (strcmp(models[i].provider_model, id) == 0 &&
			(provider == NULL || strcmp(models[i].provider, provider) == 0))
			return &models[i];
	return NULL;
}

/*
 * The Claude version in a model id: claude-opus-4-5-20251101 and
 * claude-sonnet-4-5 are 4.5, claude-3-5-sonnet-20241022 is 3.5 (a date is
 * no minor version); false when there is none.
 */
static bool
claude_version(const char *model, int *major, int *minor)
{
	const char *s;
	char	   *end;

	if (strncmp(model, "claude-", 7) != 0)
		return false;
	for (s = model + 7; *s && !(*s >= '0' && *s <= '9'); s++)
		;
	if (*s == '\0')
		return false;
	*major = (int) strtol(s, &end, 10);
	*minor = 0;
	if (end[0] == '-' && end[1] >= '0' && end[1] <= '9')
	{
		char	   *e2;
		long		m = strtol(end + 1, &e2, 10);

		if (e2 - (end + 1) <= 2)
			*minor = (int) m;
	}
	return true;
}

/*
 * The documented rule for a model whose row says nothing of the sampling
 * parameters it refuses (README, "Models"): OpenAI's reasoning models (o1,
 * o3, o4-mini, gpt-5 but not its chat variants) refuse temperature, top_p
 * and stop; Claude models newer than Opus 4.6 refuse temperature and top_p;
 * Claude 4.1 to 4.6 refuse the two together (top_p is left out).
 */
int
model_rule_caps(const char *kind, const char *model)
{
	int			major;
	int			minor;

	if (strcmp(kind, "anthropic") == 0)
	{
		if (!claude_version(model, &major, &minor))
			return 0;
		if (major > 4 || (major == 4 && minor > 6))
			return MODEL_NO_TEMPERATURE | MODEL_NO_TOP_P;
		if (major == 4 && minor >= 1)
			return MODEL_TEMPERATURE_XOR_TOP_P;
		return 0;
	}
	if ((model[0] == 'o' && model[1] >= '1' && model[1] <= '9') ||
		(strncmp(model, "gpt-5", 5) == 0 && strstr(model, "-chat") == NULL))
		return MODEL_NO_TEMPERATURE | MODEL_NO_TOP_P | MODEL_NO_STOP;
	return 0;
}

/* The model row named `name`, or NULL */
static ModelConf *
model_row_of(const char *name)
{
	for (int i = 0; i < nmodels; i++)
		if (strcmp(models[i].name, name) == 0)
			return &models[i];
	return NULL;
}

/*
 * A target's model settings: its row's (found by name), else the rules:
 * the output limit of the setting, the parameters of model_rule_caps, the
 * kind's output limit parameter, native structured output except at
 * Anthropic (where a forced tool works with every model).
 */
static void
target_settings(RouteTarget *t)
{
	ModelConf  *m = model_row_of(t->name);

	t->max_output_tokens = m ? m->max_output_tokens : 0;
	t->refuses = m && m->refuses >= 0 ? m->refuses :
		(t->provider ? model_rule_caps(t->provider->ops->kind, t->model) : 0);
	t->output_limit_param = m && m->output_limit_param ? pstrdup(m->output_limit_param) : NULL;
	t->native_schema = m && m->structured_output ?
		strcmp(m->structured_output, "native") == 0 : false;
	t->embedding_dimensions = m ? m->embedding_dimensions : 0;
	t->max_input_tokens = m ? m->max_input_tokens : 0;
}

/* A target's identity (see the header), palloc'd */
static char *
target_identity(const char *provider, const char *id)
{
	ModelConf  *m = model_by_id(provider, id);

	return m ? pstrdup(m->name) : pnstrdup(id, model_base_len(id));
}

/*
 * The identity of a model `name` as prices and budgets know it (see the
 * header): a maester.model row's name for its name, an alias or its id;
 * otherwise the name without a snapshot date.  palloc'd.
 */
char *
router_model_identity(const char *name)
{
	ModelConf  *m;

	router_fresh();
	m = model_by_name(name);
	if (m == NULL)
		m = model_by_id(NULL, name);
	return m ? pstrdup(m->name) : pnstrdup(name, model_base_len(name));
}

/*
 * The model id the maester.model row named (or aliased) `name` sends, or
 * NULL when no row has that name; points into the cache, valid until the
 * next lookup.
 */
const char *
router_model_row_id(const char *name)
{
	ModelConf  *m;

	router_fresh();
	m = model_by_name(name);
	return m ? m->provider_model : NULL;
}

/*
 * Raise 22023 unless `name` may be a requested model name (see the header),
 * echoing it cut short.
 */
void
router_check_model_name(const char *name)
{
	size_t		len = strlen(name);

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model name must not be empty"),
				 errhint("Name a model or a route, or pass NULL for the route \"default\".")));
	if (len > MODEL_NAME_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model name \"%s\" is too long", maester_cut_short(name, 64)),
				 errdetail("Model names are at most %d bytes; this one has %zu.", MODEL_NAME_MAX, len)));
	if (maester_control_char(name) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model name \"%s\" contains a control character", maester_cut_short(name, 64)),
				 errdetail("Model names are one line of printable characters.")));
	if (strchr(name, '%') != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model name \"%s\" contains \"%%\"", maester_cut_short(name, 64)),
				 errdetail("A requested model is a name, not a pattern, and no model id contains \"%%\"."),
				 errhint("Name the model or the route in full.")));
}

/* Does `model` match one of the provider's LIKE patterns? */
static bool
provider_serves(ProviderConf *p, text *model)
{
	for (int k = 0; k < p->npatterns; k++)
		if (DatumGetBool(DirectFunctionCall2Coll(textlike, C_COLLATION_OID,
												 PointerGetDatum(model),
												 PointerGetDatum(p->patterns[k]))))
			return true;
	return false;
}

/*
 * Does anything route `name`: a maester.model row (name, alias or id), a
 * route target, or an enabled provider's pattern (for the name or its
 * undated base)?  For the warning on a budget or price no call can match.
 */
bool
router_model_known(const char *name)
{
	text	   *full;
	text	   *base;

	router_fresh();
	if (model_by_name(name) || model_by_id(NULL, name))
		return true;
	for (int i = 0; i < nroutes; i++)
		for (int k = 0; k < routes[i].ntargets; k++)
			if (strcmp(routes[i].models[k], name) == 0 ||
				(model_base_len(routes[i].models[k]) == (int) strlen(name) &&
				 strncmp(routes[i].models[k], name, strlen(name)) == 0))
				return true;
	full = cstring_to_text(name);
	base = cstring_to_text_with_len(name, model_base_len(name));
	for (int i = 0; i < nproviders; i++)
		if (providers[i].enabled &&
			(provider_serves(&providers[i], full) || provider_serves(&providers[i], base)))
			return true;
	return false;
}

/*
 * A copy of a provider's configuration in the current memory context, so
 * that a plan stays valid if the cache is reloaded during the call (an
 * llm_rubric check makes a nested call, which may reload it).
 */
static ProviderConf *
copy_provider(ProviderConf *p)
{
	ProviderConf *c;

	if (p == NULL)
		return NULL;
	c = palloc(sizeof(ProviderConf));
	*c = *p;
	c->name = pstrdup(p->name);
	c->base_url = pstrdup(p->base_url);
	c->api_key_env = p->api_key_env ? pstrdup(p->api_key_env) : NULL;
	c->api_key_file = p->api_key_file ? pstrdup(p->api_key_file) : NULL;
	c->anthropic_version = p->anthropic_version ? pstrdup(p->anthropic_version) : NULL;
	c->api_version = p->api_version ? pstrdup(p->api_version) : NULL;
	c->npatterns = 0;			/* patterns are only needed for resolution */
	c->patterns = NULL;
	return c;
}

/*
 * The ordered targets for `requested` (NULL: the default route), allocated
 * in the current memory context (nothing points into the cache); see the
 * header comment for the rules.
 */
RoutePlan *
router_plan(const char *requested)
{
	RoutePlan  *plan = palloc0(sizeof(RoutePlan));
	const char *name = requested ? requested : "default";

	if (requested)
		router_check_model_name(requested);
	router_fresh();

	plan->requested = requested;

	for (int i = 0; i < nroutes; i++)
	{
		if (strcmp(routes[i].name, name) != 0)
			continue;
		if (routes[i].ntargets == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("route \"%s\" has no targets", name),
					 errhint("Add targets with INSERT INTO maester.route_target.")));
		plan->is_route = true;
		plan->route = pstrdup(routes[i].name);
		plan->strategy = pstrdup(routes[i].strategy);
		plan->sticky_tenant = routes[i].sticky_tenant;
		plan->ntargets = routes[i].ntargets;
		plan->targets = palloc0(sizeof(RouteTarget) * plan->ntargets);
		for (int k = 0; k < plan->ntargets; k++)
		{
			plan->targets[k].provider = copy_provider(find_provider(routes[i].providers[k]));
			plan->targets[k].model = pstrdup(routes[i].models[k]);
			plan->targets[k].name = target_identity(routes[i].providers[k], routes[i].models[k]);
			plan->targets[k].weight = routes[i].weights[k];
			plan->targets[k].position = k + 1;
			if (plan->targets[k].provider == NULL)
				elog(ERROR, "provider \"%s\" of route \"%s\" not found",
					 routes[i].providers[k], name);
			target_settings(&plan->targets[k]);
		}
		return plan;
	}
	if (requested == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("no model was given and there is no route \"default\""),
				 errhint("Pass model => '...', or create the route \"default\" in maester.route.")));

	for (int i = 0; i < nmodels; i++)
	{
		bool		match = strcmp(models[i].name, requested) == 0;

		for (int k = 0; !match && k < models[i].naliases; k++)
			match = strcmp(models[i].aliases[k], requested) == 0;
		if (!match)
			continue;
		plan->ntargets = 1;
		plan->targets = palloc0(sizeof(RouteTarget));
		plan->targets[0].provider = copy_provider(find_provider(models[i].provider));
		plan->targets[0].model = pstrdup(models[i].provider_model);
		plan->targets[0].name = pstrdup(models[i].name);
		if (plan->targets[0].provider == NULL)
			elog(ERROR, "provider \"%s\" of model \"%s\" not found",
				 models[i].provider, models[i].name);
		target_settings(&plan->targets[0]);
		return plan;
	}

	{
		text	   *m = cstring_to_text(requested);

		ProviderConf *disabled = NULL;

		for (int i = 0; i < nproviders; i++)
		{
			if (!provider_serves(&providers[i], m))
				continue;
			if (!providers[i].enabled)
			{
				if (disabled == NULL)
					disabled = &providers[i];
				continue;
			}
			plan->ntargets = 1;
			plan->targets = palloc0(sizeof(RouteTarget));
			plan->targets[0].provider = copy_provider(&providers[i]);
			plan->targets[0].model = pstrdup(requested);
			plan->targets[0].name = target_identity(providers[i].name, requested);
			target_settings(&plan->targets[0]);
			return plan;
		}
		/* as for a model row or a route target on a disabled provider */
		if (disabled != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_MAESTER_UNAVAILABLE),
					 errmsg("provider \"%s\" of model \"%s\" is disabled", disabled->name, requested),
					 errhint("Enable it (UPDATE maester.provider SET enabled = true), or route the model to another provider.")));
	}
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("no provider serves model \"%s\"", requested),
			 errhint("Add the model to maester.model, a matching pattern to maester.provider.models, or a route of that name to maester.route.")));
	return NULL;				/* keep compiler quiet */
}

/*
 * A tenant's request and token rate limits (maester.tenant_limit; 0: none).
 * Reads the cache: the caller has planned a route in this call.
 */
void
router_tenant_limits(const char *tenant, int *requests_per_minute, int *tokens_per_minute)
{
	*requests_per_minute = *tokens_per_minute = 0;
	for (int i = 0; i < ntenantlimits; i++)
		if (strcmp(tenantlimits[i].tenant, tenant) == 0)
		{
			*requests_per_minute = tenantlimits[i].requests_per_minute;
			*tokens_per_minute = tenantlimits[i].tokens_per_minute;
			return;
		}
}

PG_FUNCTION_INFO_V1(model_identity);
/*
 * maester.model_identity(name text) RETURNS text: the name prices and
 * budgets know the model `name` by (see the header).
 */
Datum
model_identity(PG_FUNCTION_ARGS)
{
	maester_check_catalog();
	PG_RETURN_TEXT_P(cstring_to_text(router_model_identity(text_to_cstring(PG_GETARG_TEXT_PP(0)))));
}

PG_FUNCTION_INFO_V1(model_name_check);
/*
 * Trigger, BEFORE INSERT OR UPDATE OF model FOR EACH ROW on maester.budget
 * and maester.price: a WARNING when nothing routes the row's model (no
 * maester.model name, alias or id, no route target, no enabled provider's
 * pattern), so no call would ever match it.  A warning, not an error: a
 * price or budget may come before the model's configuration (pg_restore
 * loads tables in any order).
 */
Datum
model_name_check(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	tuple;
	bool		isnull;
	Datum		d;
	int			attno;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		elog(ERROR, "model_name_check: not called as a row trigger");
	maester_check_catalog();
	tuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? trigdata->tg_newtuple : trigdata->tg_trigtuple;
	attno = SPI_fnumber(trigdata->tg_relation->rd_att, "model");
	if (attno <= 0)
		elog(ERROR, "model_name_check: no column \"model\"");
	d = heap_getattr(tuple, attno, trigdata->tg_relation->rd_att, &isnull);
	if (!isnull)
	{
		char	   *model = TextDatumGetCString(d);

		if (!router_model_known(model))
			ereport(WARNING,
					(errmsg("no provider, model or route serves model \"%s\": this %s applies to no call",
							maester_cut_short(model, 64), RelationGetRelationName(trigdata->tg_relation)),
					 errhint("Name a model of maester.model (or one of its aliases), a route target's model, or a model a provider's pattern serves.")));
	}
	return PointerGetDatum(tuple);
}

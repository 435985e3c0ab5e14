/*-------------------------------------------------------------------------
 *
 * registry.c
 *	  The prompt registry: prompt_render, its per-backend cache, and the
 *	  C parts of registration (validation triggers, invalidation).
 *
 * Registration itself (prompt_register, prompt_set_label) is SQL in the
 * install script; the rows it writes are checked here by triggers, so that
 * a plain INSERT by an admin obeys the same rules:
 *	 - prompt_version_guard: names valid, templates compile (the error names
 *	   the character position), `variables` and `template_hash` computed by
 *	   us, never taken from the caller; UPDATE, DELETE and TRUNCATE refused.
 *	 - cache_invalidate: after any change to prompt_version or
 *	   prompt_label, queue a relcache invalidation of that table.
 *
 * Rollouts.  A label may split its renders over several versions by weight
 * (prompt_label.weights, {"v2": 90, "v3": 10}; checked by the label's
 * trigger).  Its cache entry then holds no template but its arms: the
 * entries of those versions, in registration order, with cumulative
 * weights.  Every render by the label picks an arm.  With a sticky key,
 * the key is hashed (hash_bytes_extended) with a seed made of the prompt
 * and label names, and the top 32 bits of the hash, scaled to the total
 * weight, name the arm: the same key always lands on the same arm while the
 * weights stay, and when the newest arm's weight grows (a two-arm rollout
 * ramped up) keys only move to it, never away.  Without a key the pick is
 * pg_prng's, per render.  Weights live in the label table, so a change of
 * them reaches the cache like a label move.
 *
 * The render cache.  Each backend keeps, in PromptCacheContext, a hash table
 * from "name<US>ref" (ref = version or label, empty for latest) to the
 * resolved version with its compiled templates.  Correctness rests on
 * PostgreSQL's shared invalidation queue: cache_invalidate queues a
 * relcache invalidation for the changed table, which other backends receive
 * only once the change has committed (and this backend at the next command,
 * or at abort); our relcache callback then marks the cache stale.  The
 * callback only sets a flag, because it can run in the middle of a cache
 * load (SPI takes locks, which accepts invalidations); the next lookup
 * throws the stale cache away.  Every render calls
 * AcceptInvalidationMessages(), which costs one unlocked read when nothing
 * is queued, so a long transaction sees other sessions' registrations too.
 *
 * Cache misses read the registry with the latest snapshot, like catalog
 * lookups do: a committed change whose invalidation we already processed is
 * then always visible, so a stale entry can never be re-cached after the
 * invalidation that should have removed it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/sinval.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "catalog.h"
#include "evaluate.h"
#include "maester.h"
#include "message.h"
#include "registry.h"
#include "request.h"
#include "sha256.h"
#include "template.h"
#include "util.h"

/* a rollout's weights add up to at most this (prompt_label_guard's bound) */
#define ROLLOUT_MAX_TOTAL 1000000

/* key: name, a unit separator, the ref ("" for latest) */
#define PROMPT_CACHE_KEYSIZE (2 * (MAESTER_NAME_MAXLEN * 4) + 2)

typedef struct PromptCacheEntry
{
	char		key[PROMPT_CACHE_KEYSIZE];	/* hash key, must be first */
	text	   *name;
	text	   *version;
	text	   *template_hash;
	CompiledTemplate *tmpl;
	CompiledTemplate *sys;		/* NULL when the version has none */
	int			nmsgs;			/* a chat prompt: its messages' roles and */
	char	  **roles;			/* templates (tmpl and sys are then NULL) */
	CompiledTemplate **msgs;
	Jsonb	   *checks;			/* the version's evaluation checks, or NULL */
	Jsonb	   *config;			/* the version's config (model, options), or NULL */

	/*
	 * A label in a rollout (narms > 0): none of the above but `name`; a
	 * render picks one of `arms` (version entries, in registration order):
	 * arm i covers the points from upto[i - 1] to upto[i] - 1 of 0 ..
	 * total - 1.
	 */
	int			narms;
	struct PromptCacheEntry **arms;
	uint64	   *upto;			/* cumulative weights */
	uint64		total;			/* their sum, at most ROLLOUT_MAX_TOTAL */
	uint64		seed;			/* hash of name and label, for sticky keys */
	char	   *label;
	char	   *weights;		/* the weights' jsonb text, for spans */
} PromptCacheEntry;

static MemoryContext PromptCacheContext = NULL;
static HTAB *PromptCache = NULL;
static bool PromptCacheStale = false;
static uint64 PromptCacheGeneration = 0;	/* bumped by every reset */
static Oid	PromptVersionRelid = InvalidOid;
static Oid	PromptLabelRelid = InvalidOid;
static SPIPlanPtr LoadPlan = NULL;
static SPIPlanPtr ExistsPlan = NULL;
static SPIPlanPtr RolloutPlan = NULL;

static PromptCacheEntry *prompt_cache_lookup(const char *name, const char *ref);

/* Relcache callback: mark the cache stale if one of our tables changed */
static void
prompt_cache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == PromptVersionRelid ||
		relid == PromptLabelRelid)
		PromptCacheStale = true;
}

/* Called from _PG_init */
void
registry_init(void)
{
	CacheRegisterRelcacheCallback(prompt_cache_callback, (Datum) 0);
}

/* Throw the whole cache away (it is rebuilt lazily) */
static void
prompt_cache_reset(void)
{
	if (PromptCacheContext != NULL)
		MemoryContextReset(PromptCacheContext);
	PromptCache = NULL;
	PromptCacheGeneration++;
	PromptVersionRelid = InvalidOid;
	PromptLabelRelid = InvalidOid;
	PromptCacheStale = false;
}

static void
prompt_cache_create(void)
{
	HASHCTL		ctl;

	if (PromptCacheContext == NULL)
		PromptCacheContext = AllocSetContextCreate(TopMemoryContext,
												   "maester prompt cache",
												   ALLOCSET_DEFAULT_SIZES);
	ctl.keysize = PROMPT_CACHE_KEYSIZE;
	ctl.entrysize = sizeof(PromptCacheEntry);
	ctl.hcxt = PromptCacheContext;
	PromptCache = hash_create("maester prompt cache", 64, &ctl,
							  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
}

/*
 * Raise 22023 unless `value` is a valid prompt, version or label name:
 * non-empty, at most MAESTER_NAME_MAXLEN characters, no whitespace or
 * control characters.  `kind` names it in the message.
 */
static void
check_name(const char *kind, const char *value)
{
	int			nchars = pg_mbstrlen(value);
	const unsigned char *p;

	if (nchars == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s name must not be empty", kind)));
	if (nchars > MAESTER_NAME_MAXLEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s name is too long (%d characters)", kind, nchars),
				 errdetail("Names are at most %d characters.",
						   MAESTER_NAME_MAXLEN)));
	for (p = (const unsigned char *) value; *p; p++)
	{
		/*
		 * ASCII blanks and controls, plus C1 controls and the no-break space
		 * in UTF-8 (U+0080..U+009F, U+00A0 are 0xC2 0x80..0xA0).
		 */
		if (*p <= ' ' || *p == 0x7f ||
			(GetDatabaseEncoding() == PG_UTF8 && p[0] == 0xc2 &&
			 p[1] >= 0x80 && p[1] <= 0xa0))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s name \"%s\" contains whitespace or a control character",
							kind, value),
					 errhint("Use names like \"system_summary\" or \"v2\".")));
	}
}

PG_FUNCTION_INFO_V1(check_name_sql);
/*
 * maester.check_name(kind text, value text) RETURNS text: the name rule for
 * SQL callers (prompt_register, prompt_set_label, the label trigger).
 */
Datum
check_name_sql(PG_FUNCTION_ARGS)
{
	maester_check_catalog();
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s name must not be null",
						PG_ARGISNULL(0) ? "a" : text_to_cstring(PG_GETARG_TEXT_PP(0)))));
	check_name(PG_ARGISNULL(0) ? "a" : text_to_cstring(PG_GETARG_TEXT_PP(0)),
			   text_to_cstring(PG_GETARG_TEXT_PP(1)));
	PG_RETURN_DATUM(PG_GETARG_DATUM(1));
}

/*
 * A chat prompt's messages: an array of {"role", "content"} objects, roles
 * system, user and assistant, each content a template, at least one of
 * them not a system message.  Compiled into *roles and *tmpls (in the
 * current memory context); raises 22023 naming the message.
 */
static int
chat_templates(Jsonb *messages, char ***roles, CompiledTemplate ***tmpls)
{
	int			n;
	int			nconv = 0;

	if (!JB_ROOT_IS_ARRAY(messages) || JB_ROOT_IS_SCALAR(messages) ||
		(n = JsonContainerSize(&messages->root)) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("messages must be a non-empty array of {\"role\", \"content\"} templates")));
	*roles = palloc(sizeof(char *) * n);
	*tmpls = palloc(sizeof(CompiledTemplate *) * n);
	for (int i = 0; i < n; i++)
	{
		JsonbValue *e = getIthJsonbValueFromContainer(&messages->root, i);
		JsonbValue *role;
		JsonbValue *content;
		char		what[64];

		if (e->type != jbvBinary || !JsonContainerIsObject(e->val.binary.data) ||
			JsonContainerSize(e->val.binary.data) != 2 ||
			(role = getKeyJsonValueFromContainer(e->val.binary.data, "role", 4, NULL)) == NULL ||
			(content = getKeyJsonValueFromContainer(e->val.binary.data, "content", 7, NULL)) == NULL ||
			role->type != jbvString || content->type != jbvString)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("message %d of the chat prompt is not {\"role\": ..., \"content\": \"template\"}", i + 1)));
		(*roles)[i] = pnstrdup(role->val.string.val, role->val.string.len);
		if (strcmp((*roles)[i], "system") != 0 && strcmp((*roles)[i], "user") != 0 &&
			strcmp((*roles)[i], "assistant") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("message %d of the chat prompt has role \"%s\"", i + 1, (*roles)[i]),
					 errhint("The roles of a chat prompt are system, user and assistant.")));
		if (strcmp((*roles)[i], "system") != 0)
			nconv++;
		snprintf(what, sizeof(what), "message %d", i + 1);
		(*tmpls)[i] = template_compile(content->val.string.val, content->val.string.len, what);
	}
	if (nconv == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a chat prompt needs a user or assistant message")));
	return n;
}

/* Build a text[] of the distinct variables of the given templates */
static ArrayType *
variables_array(CompiledTemplate *const *tmpls, int ntmpls)
{
	Datum	   *elems;
	int			n = 0;
	int			max = 0;

	for (int t = 0; t < ntmpls; t++)
		if (tmpls[t])
			max += tmpls[t]->nvars;
	elems = palloc(sizeof(Datum) * Max(max, 1));
	for (int t = 0; t < ntmpls; t++)
	{
		if (tmpls[t] == NULL)
			continue;
		for (int v = 0; v < tmpls[t]->nvars; v++)
		{
			bool		dup = false;

			/* a template's variables are distinct: look in the earlier ones */
			for (int k = 0; k < t && !dup; k++)
				dup = tmpls[k] != NULL &&
					template_var_index(tmpls[k], tmpls[t]->vars[v], tmpls[t]->var_lens[v]) >= 0;
			if (!dup)
				elems[n++] = CStringGetTextDatum(tmpls[t]->vars[v]);
			CHECK_FOR_INTERRUPTS();
		}
	}
	return construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT);
}

PG_FUNCTION_INFO_V1(template_variables);
/*
 * maester.template_variables(template text) RETURNS text[]: validate a
 * template and list its variables in order of first use.
 */
Datum
template_variables(PG_FUNCTION_ARGS)
{
	text	   *src = PG_GETARG_TEXT_PP(0);
	CompiledTemplate *t;

	maester_check_catalog();
	t = template_compile(VARDATA_ANY(src), VARSIZE_ANY_EXHDR(src), "template");
	PG_RETURN_ARRAYTYPE_P(variables_array(&t, 1));
}

/*
 * The identity of a version's content: SHA-256 hex of the jsonb text of
 * {"template", "system_template", "config", "checks"}, and "messages" for
 * a chat prompt only, so that a text version's hash is 0.1.0's (jsonb's
 * text is canonical: keys sorted, one blank after ':' and ',').  In SQL:
 *	 encode(sha256(convert_to((jsonb_build_object('template', t,
 *		 'system_template', s, 'config', c, 'checks', k) ||
 *		 CASE WHEN m IS NULL THEN '{}' ELSE jsonb_build_object('messages', m)
 *		 END)::text, 'UTF8')), 'hex')
 */
static text *
content_hash(HeapTuple tuple, TupleDesc desc)
{
	StringInfoData sql;
	const char *parts[1];
	int			lens[1];
	char		hex[MAESTER_SHA256_HEXLEN + 1];
	Datum		values[5];
	bool		nulls[5];
	const char *cols[5] = {"template", "system_template", "config", "checks", "messages"};
	Oid			types[5];
	char		nullflags[5];
	int			rc;
	char	   *json;

	for (int i = 0; i < 5; i++)
	{
		int			attno = SPI_fnumber(desc, cols[i]);

		if (attno <= 0)
			elog(ERROR, "column \"%s\" not found in prompt_version", cols[i]);
		values[i] = SPI_getbinval(tuple, desc, attno, &nulls[i]);
		types[i] = SPI_gettypeid(desc, attno);
		nullflags[i] = nulls[i] ? 'n' : ' ';
	}
	initStringInfo(&sql);
	appendStringInfoString(&sql,
						   "SELECT (pg_catalog.jsonb_build_object('template', $1, "
						   "'system_template', $2, 'config', $3, 'checks', $4) OPERATOR(pg_catalog.||) "
						   "CASE WHEN $5 IS NULL THEN '{}'::pg_catalog.jsonb "
						   "ELSE pg_catalog.jsonb_build_object('messages', $5) END)::pg_catalog.text");
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute_with_args(sql.data, 5, types, values, nullflags, true, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not build the content of a prompt version");
	json = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	parts[0] = json;
	lens[0] = strlen(json);
	maester_sha256_hex(parts, lens, 1, hex);
	SPI_finish();
	return cstring_to_text(hex);
}

PG_FUNCTION_INFO_V1(prompt_version_guard);
/*
 * Trigger on maester.prompt_version.  BEFORE INSERT FOR EACH ROW: check the
 * names, compile the templates, and set `variables` and `template_hash`.
 * BEFORE UPDATE, DELETE (row) and TRUNCATE (statement): refuse, since a
 * version once registered is immutable.
 */
Datum
prompt_version_guard(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	HeapTuple	tuple;
	Datum		d;
	bool		isnull;
	CompiledTemplate **tmpls;
	int			ntmpls;
	int			attnos[2];
	Datum		newvals[2];
	bool		newnulls[2] = {false, false};
	char	   *name;
	char	   *version;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "prompt_version_guard: not called by trigger manager");
	maester_check_catalog();

	if (!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("prompt versions are immutable"),
				 errdetail("%s on maester.prompt_version is not allowed.",
						   TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? "UPDATE" :
						   TRIGGER_FIRED_BY_DELETE(trigdata->tg_event) ? "DELETE" :
						   "TRUNCATE"),
				 errhint("Register a new version with maester.prompt_register() and move a label to it.")));

	if (!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BEFORE(trigdata->tg_event))
		elog(ERROR, "prompt_version_guard: must fire BEFORE INSERT FOR EACH ROW");

	tuple = trigdata->tg_trigtuple;
	desc = trigdata->tg_relation->rd_att;

	d = SPI_getbinval(tuple, desc, SPI_fnumber(desc, "name"), &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("prompt name must not be null")));
	name = TextDatumGetCString(d);
	check_name("prompt", name);
	d = SPI_getbinval(tuple, desc, SPI_fnumber(desc, "version"), &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("version name must not be null")));
	version = TextDatumGetCString(d);
	check_name("version", version);

	d = SPI_getbinval(tuple, desc, SPI_fnumber(desc, "messages"), &isnull);
	if (!isnull)
	{
		/* a chat prompt: its messages' templates (the CHECK keeps the rest NULL) */
		char	  **roles;

		ntmpls = chat_templates(DatumGetJsonbP(d), &roles, &tmpls);
	}
	else
	{
		tmpls = palloc0(sizeof(CompiledTemplate *) * 2);
		ntmpls = 2;
		d = SPI_getbinval(tuple, desc, SPI_fnumber(desc, "template"), &isnull);
		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("template must not be null")));
		{
			text	   *t = DatumGetTextPP(d);

			tmpls[0] = template_compile(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), "template");
		}
		d = SPI_getbinval(tuple, desc, SPI_fnumber(desc, "system_template"), &isnull);
		if (!isnull)
		{
			text	   *t = DatumGetTextPP(d);

			tmpls[1] = template_compile(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t),
										"system template");
		}
	}

	/* the checks must be ones evaluate() accepts */
	d = SPI_getbinval(tuple, desc, SPI_fnumber(desc, "checks"), &isnull);
	if (!isnull)
		maester_validate_checks(DatumGetJsonbP(d));

	attnos[0] = SPI_fnumber(desc, "variables");
	attnos[1] = SPI_fnumber(desc, "template_hash");
	newvals[0] = PointerGetDatum(variables_array(tmpls, ntmpls));
	newvals[1] = PointerGetDatum(content_hash(tuple, desc));

	tuple = heap_modify_tuple_by_cols(tuple, desc, 2, attnos, newvals, newnulls);
	return PointerGetDatum(tuple);
}

PG_FUNCTION_INFO_V1(cache_invalidate);
/*
 * Trigger, AFTER INSERT OR UPDATE OR DELETE FOR EACH STATEMENT on
 * prompt_version and prompt_label: queue a relcache invalidation of the
 * table, which reaches every backend's render cache at commit.
 */
Datum
cache_invalidate(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "cache_invalidate: not called by trigger manager");
	maester_check_catalog();
	CacheInvalidateRelcacheByRelid(RelationGetRelid(trigdata->tg_relation));
	return PointerGetDatum(NULL);
}

/* Raise 42704 for a lookup that found nothing, saying what was missing */
static void
report_not_found(const char *name, const char *ref)
{
	Datum		arg = CStringGetTextDatum(name);
	int			rc;

	if (ExistsPlan == NULL)
	{
		Oid			argtypes[1] = {TEXTOID};

		(void) maester_kept_plan(&ExistsPlan,
								 "SELECT 1 FROM maester.prompt p "
								 "WHERE p.name OPERATOR(pg_catalog.=) $1",
								 1, argtypes);
	}
	rc = SPI_execute_snapshot(ExistsPlan, &arg, NULL, GetLatestSnapshot(),
							  InvalidSnapshot, true, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_snapshot failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("prompt \"%s\" does not exist", name),
				 errhint("Register it with maester.prompt_register().")));
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("prompt \"%s\" has no version or label \"%s\"", name, ref),
			 errhint("See maester.prompt_versions for its versions and labels.")));
}

/*
 * If `label` is a label of prompt `name` in a rollout, make `entry` (whose
 * key is set) that rollout: look its arms up in the cache (loading them)
 * and sum their weights.  Returns false, changing nothing, for any other
 * ref: a version, a plain label, or nothing at all.
 */
static bool
prompt_cache_load_rollout(PromptCacheEntry *entry, const char *name, const char *label)
{
	MemoryContext callcxt = CurrentMemoryContext;
	MemoryContext oldcxt;
	Datum		args[2];
	int			rc;
	int			narms;
	char	  **versions;
	uint64	   *weights;
	uint64		total = 0;
	char	   *weights_text = NULL;
	StringInfoData seed;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (RolloutPlan == NULL)
	{
		Oid			argtypes[2] = {TEXTOID, TEXTOID};

		/*
		 * The arms in registration order, so that the newest version is the
		 * last arm (see the header: ramping it up moves keys only to it).
		 * The label trigger checked that every key is a version of the
		 * prompt and every weight a positive integer, adding up to at most
		 * 1,000,000.
		 */
		(void) maester_kept_plan(&RolloutPlan,
								 "SELECT w.key, (w.value)::pg_catalog.int8, l.weights::pg_catalog.text "
								 "FROM maester.prompt_label l "
								 "CROSS JOIN LATERAL pg_catalog.jsonb_each(l.weights) w "
								 "JOIN maester.prompt_version v ON v.name OPERATOR(pg_catalog.=) l.name "
								 "AND v.version OPERATOR(pg_catalog.=) w.key "
								 "WHERE l.name OPERATOR(pg_catalog.=) $1 "
								 "AND l.label OPERATOR(pg_catalog.=) $2 "
								 "ORDER BY v.seq",
								 2, argtypes);
	}
	args[0] = CStringGetTextDatum(name);
	args[1] = CStringGetTextDatum(label);
	rc = SPI_execute_snapshot(RolloutPlan, args, NULL, GetLatestSnapshot(),
							  InvalidSnapshot, true, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_snapshot failed: %s", SPI_result_code_string(rc));
	narms = (int) SPI_processed;
	if (narms == 0)
	{
		SPI_finish();
		return false;
	}

	/* copy the arms out of SPI's memory before SPI_finish frees it */
	versions = MemoryContextAlloc(callcxt, sizeof(char *) * narms);
	weights = MemoryContextAlloc(callcxt, sizeof(uint64) * narms);
	for (int i = 0; i < narms; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		w;

		versions[i] = MemoryContextStrdup(callcxt, SPI_getvalue(tup, desc, 1));
		w = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
		if (isnull || w <= 0 || w > ROLLOUT_MAX_TOTAL)
			elog(ERROR, "rollout of prompt \"%s\" label \"%s\" has a bad weight", name, label);
		weights[i] = (uint64) w;
		total += (uint64) w;
		if (i == 0)
			weights_text = MemoryContextStrdup(callcxt, SPI_getvalue(tup, desc, 3));
	}
	SPI_finish();
	if (total > ROLLOUT_MAX_TOTAL)
		elog(ERROR, "rollout of prompt \"%s\" label \"%s\" weighs more than %d",
			 name, label, ROLLOUT_MAX_TOTAL);

	/* the seed of sticky keys: the same key on another label lands apart */
	initStringInfo(&seed);
	appendStringInfo(&seed, "%s\x1f%s", name, label);

	oldcxt = MemoryContextSwitchTo(PromptCacheContext);
	entry->name = cstring_to_text(name);
	entry->label = pstrdup(label);
	entry->weights = pstrdup(weights_text);
	entry->seed = hash_bytes_extended((const unsigned char *) seed.data, seed.len, 0);
	entry->total = total;
	entry->arms = palloc0(sizeof(PromptCacheEntry *) * narms);
	entry->upto = palloc(sizeof(uint64) * narms);
	total = 0;
	for (int i = 0; i < narms; i++)
	{
		total += weights[i];
		entry->upto[i] = total;
	}
	MemoryContextSwitchTo(oldcxt);

	/*
	 * The arms are entries of their own, shared with renders by version.
	 * Each is looked up by its version name, which no label of the prompt
	 * may share.
	 */
	for (int i = 0; i < narms; i++)
		entry->arms[i] = prompt_cache_lookup(name, versions[i]);
	entry->narms = narms;
	return true;
}

/*
 * Pick the entry a render of `entry` uses: itself, or for a rollout one of
 * its arms by weight, by `sticky_key` (keylen bytes) or, without one, at
 * random.
 */
static PromptCacheEntry *
prompt_pick_arm(PromptCacheEntry *entry, const char *sticky_key, int keylen)
{
	uint64		point;

	if (entry->narms == 0)
		return entry;
	if (sticky_key != NULL)
	{
		uint64		h = hash_bytes_extended((const unsigned char *) sticky_key,
											keylen, entry->seed);

		/*
		 * The key's place in [0, 1) as 32 bits, scaled to the weights: exact
		 * in 64 bits since total is at most ROLLOUT_MAX_TOTAL.
		 */
		point = ((h >> 32) * entry->total) >> 32;
	}
	else
		point = pg_prng_uint64_range(&pg_global_prng_state, 0, entry->total - 1);
	for (int i = 0; i < entry->narms; i++)
		if (point < entry->upto[i])
			return entry->arms[i];
	return entry->arms[entry->narms - 1];	/* not reached */
}

/*
 * Load the entry for (name, ref) from the registry into `entry`, whose key
 * is already set.  ref NULL means the label "latest".
 */
static void
prompt_cache_load(PromptCacheEntry *entry, const char *name, const char *ref)
{
	Datum		args[2];
	int			rc;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;
	MemoryContext oldcxt;
	text	   *tmpl_text;
	text	   *sys_text = NULL;

	/*
	 * The table OIDs, for the invalidation callback: known before the
	 * queries run, so that an invalidation arriving while they take their
	 * locks is not missed.
	 */
	if (!OidIsValid(PromptVersionRelid))
	{
		Oid			nsp = get_namespace_oid("maester", false);

		PromptVersionRelid = get_relname_relid("prompt_version", nsp);
		PromptLabelRelid = get_relname_relid("prompt_label", nsp);
	}

	/* "latest" is the same as no ref at all */
	if (ref != NULL && strcmp(ref, "latest") == 0)
		ref = NULL;

	/* a label in a rollout is its arms; anything else is one version */
	if (ref != NULL && prompt_cache_load_rollout(entry, name, ref))
		return;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	if (LoadPlan == NULL)
	{
		Oid			argtypes[2] = {TEXTOID, TEXTOID};

		/*
		 * A ref is a version or a label; the registry refuses a label named
		 * like a version of the same prompt and vice versa, so at most one
		 * of the two branches can match.  A NULL ref means latest: the
		 * version registered last (highest seq); latest is not a stored
		 * label, so nothing can make it disagree with registration order.
		 */
		(void) maester_kept_plan(&LoadPlan,
								 "SELECT v.version, v.template, v.system_template, v.template_hash, v.checks, "
								 "v.config, v.messages "
								 "FROM maester.prompt_version v "
								 "WHERE v.name OPERATOR(pg_catalog.=) $1 "
								 "AND ($2 IS NULL "
								 "     OR v.version OPERATOR(pg_catalog.=) $2 "
								 "     OR v.version OPERATOR(pg_catalog.=) "
								 "        (SELECT l.version FROM maester.prompt_label l "
								 "         WHERE l.name OPERATOR(pg_catalog.=) $1 "
								 "         AND l.label OPERATOR(pg_catalog.=) $2)) "
								 "ORDER BY v.seq DESC LIMIT 1",
								 2, argtypes);
	}

	args[0] = CStringGetTextDatum(name);
	args[1] = ref ? CStringGetTextDatum(ref) : (Datum) 0;
	rc = SPI_execute_snapshot(LoadPlan, args, ref ? "  " : " n", GetLatestSnapshot(),
							  InvalidSnapshot, true, false, 2);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_snapshot failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		report_not_found(name, ref ? ref : "latest");	/* no return */

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;

	oldcxt = MemoryContextSwitchTo(PromptCacheContext);
	entry->name = cstring_to_text(name);
	entry->version = DatumGetTextPCopy(SPI_getbinval(tup, desc, 1, &isnull));
	d = SPI_getbinval(tup, desc, 2, &isnull);
	tmpl_text = isnull ? NULL : DatumGetTextPP(d);
	d = SPI_getbinval(tup, desc, 3, &isnull);
	if (!isnull)
		sys_text = DatumGetTextPP(d);
	entry->template_hash = DatumGetTextPCopy(SPI_getbinval(tup, desc, 4, &isnull));
	d = SPI_getbinval(tup, desc, 5, &isnull);
	entry->checks = isnull ? NULL : DatumGetJsonbPCopy(d);
	d = SPI_getbinval(tup, desc, 6, &isnull);
	entry->config = isnull ? NULL : DatumGetJsonbPCopy(d);
	d = SPI_getbinval(tup, desc, 7, &isnull);
	if (!isnull)
	{
		entry->nmsgs = chat_templates(DatumGetJsonbP(d), &entry->roles, &entry->msgs);
		entry->tmpl = entry->sys = NULL;
	}
	else
	{
		entry->nmsgs = 0;
		entry->tmpl = template_compile(VARDATA_ANY(tmpl_text),
									   VARSIZE_ANY_EXHDR(tmpl_text), "template");
		entry->sys = sys_text ? template_compile(VARDATA_ANY(sys_text),
												 VARSIZE_ANY_EXHDR(sys_text),
												 "system template") : NULL;
	}
	MemoryContextSwitchTo(oldcxt);

	SPI_finish();
}

/*
 * Find the cache entry for (name, ref), loading it on a miss.  The caller
 * has called prompt_cache_check() in this call.
 */
static PromptCacheEntry *
prompt_cache_lookup(const char *name, const char *ref)
{
	char		key[PROMPT_CACHE_KEYSIZE];
	PromptCacheEntry *entry;
	bool		found;
	int			nlen = strlen(name);
	int			rlen = ref ? strlen(ref) : 0;

	/* names were checked to fit by the caller; build the key (a NULL ref,
	 * latest, is marked apart from an empty one) */
	memcpy(key, name, nlen);
	key[nlen] = ref ? '\x1f' : '\x1e';
	if (rlen)
		memcpy(key + nlen + 1, ref, rlen);
	key[nlen + 1 + rlen] = '\0';

	entry = hash_search(PromptCache, key, HASH_ENTER, &found);
	if (!found)
	{
		/* fill the entry; drop it again if loading fails */
		entry->tmpl = NULL;
		entry->narms = 0;
		PG_TRY();
		{
			prompt_cache_load(entry, name, ref);
		}
		PG_CATCH();
		{
			if (PromptCache != NULL)
				hash_search(PromptCache, key, HASH_REMOVE, NULL);
			PG_RE_THROW();
		}
		PG_END_TRY();
	}
	return entry;
}

/*
 * Process pending invalidations and throw the cache away if they touched
 * the registry.  Costs one unlocked read when nothing is queued.
 */
static void
prompt_cache_check(void)
{
	AcceptInvalidationMessages();
	if (PromptCacheStale || PromptCache == NULL)
	{
		prompt_cache_reset();
		prompt_cache_create();
	}
}

/*
 * What prompt_render keeps in fn_extra: the result descriptor, and the
 * arguments and entry of the previous call, so that rendering one prompt
 * for many rows compares two short byte strings instead of converting,
 * measuring and hashing the names on every row.
 */
typedef struct RenderCallCache
{
	TupleDesc	tupdesc;
	uint64		generation;		/* PromptCacheGeneration of `entry` */
	PromptCacheEntry *entry;	/* NULL: nothing remembered */
	int			name_len;
	int			ref_len;		/* -1: ref was NULL */
	char		args[PROMPT_CACHE_KEYSIZE];	/* name bytes, then ref bytes */
} RenderCallCache;

/* Does (name, ref) equal the remembered arguments? */
static inline bool
render_args_match(RenderCallCache *rc, text *name, text *ref)
{
	int			nlen = VARSIZE_ANY_EXHDR(name);
	int			rlen = ref ? VARSIZE_ANY_EXHDR(ref) : -1;

	return rc->entry != NULL &&
		rc->generation == PromptCacheGeneration &&
		rc->name_len == nlen && rc->ref_len == rlen &&
		memcmp(rc->args, VARDATA_ANY(name), nlen) == 0 &&
		(rlen <= 0 || memcmp(rc->args + nlen, VARDATA_ANY(ref), rlen) == 0);
}

/*
 * The prompt hash: SHA-256 hex of `content`, or, with a system prompt, of
 * `system`, one zero byte, and `content` (text never contains a zero byte,
 * so the split is unambiguous).  `hex_out` holds MAESTER_SHA256_HEXLEN + 1.
 */
void
maester_prompt_hash(text *system, text *content, char *hex_out)
{
	const char *parts[3];
	int			lens[3];
	int			nparts = 0;

	if (system)
	{
		parts[nparts] = VARDATA_ANY(system);
		lens[nparts++] = VARSIZE_ANY_EXHDR(system);
		parts[nparts] = "";
		lens[nparts++] = 1;		/* the zero byte */
	}
	parts[nparts] = VARDATA_ANY(content);
	lens[nparts++] = VARSIZE_ANY_EXHDR(content);
	maester_sha256_hex(parts, lens, nparts, hex_out);
}

/*
 * Render a cached version's templates: its content and system prompt, or
 * a chat prompt's messages (a list of GenMessage; content and system are
 * then NULL); raise 22023 naming missing variables.
 */
static void
render_entry(PromptCacheEntry *entry, Jsonb *vars, text **content, text **system,
			 List **messages)
{
	StringInfoData missing = {NULL, 0, 0, 0};

	*content = *system = NULL;
	*messages = NIL;
	for (int i = 0; i < entry->nmsgs; i++)
	{
		GenMessage *m = palloc0(sizeof(GenMessage));
		text	   *t = template_render(entry->msgs[i], vars ? &vars->root : NULL, &missing);

		m->role = entry->roles[i];
		m->content = t ? text_to_cstring(t) : "";
		*messages = lappend(*messages, m);
	}
	if (entry->tmpl)
		*content = template_render(entry->tmpl, vars ? &vars->root : NULL, &missing);
	if (entry->sys)
		*system = template_render(entry->sys, vars ? &vars->root : NULL, &missing);
	if (missing.data != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("missing variables for prompt \"%s\" version \"%s\": %s",
						text_to_cstring(entry->name),
						text_to_cstring(entry->version), missing.data),
				 errdetail("A variable that is absent or JSON null is missing."),
				 errhint("Pass every variable the template names in the variables object.")));
}

/* The prompt hash of what was rendered: a text's, or a conversation's */
static void
rendered_hash(text *system, text *content, List *messages, char *hex_out)
{
	if (messages != NIL)
	{
		char	   *canon = messages_canonical(messages);
		const char *parts[1] = {canon};
		int			lens[1] = {(int) strlen(canon)};

		maester_sha256_hex(parts, lens, 1, hex_out);
	}
	else
		maester_prompt_hash(system, content, hex_out);
}

/* Raise 42704 for names too long to have been registered */
static void
check_lookup_names(const char *name, const char *ref)
{
	if (strlen(name) > MAESTER_NAME_MAXLEN * 4 ||
		pg_mbstrlen(name) > MAESTER_NAME_MAXLEN)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("prompt \"%.40s...\" does not exist", name),
				 errdetail("Prompt names are at most %d characters.",
						   MAESTER_NAME_MAXLEN)));
	if (ref && (strlen(ref) > MAESTER_NAME_MAXLEN * 4 ||
				pg_mbstrlen(ref) > MAESTER_NAME_MAXLEN))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("prompt \"%s\" has no version or label \"%.40s...\"",
						name, ref),
				 errdetail("Versions and labels are at most %d characters.",
						   MAESTER_NAME_MAXLEN)));
}

/*
 * Render prompt `name` at version or label `ref` (NULL: latest) for C
 * callers (the gateway).  A label in a rollout picks its version by
 * `sticky_key` (NULL: at random).  Strings in `out` are palloc'd.
 */
void
maester_render(const char *name, const char *ref, Jsonb *vars,
			   const char *sticky_key, RenderedPrompt *out)
{
	PromptCacheEntry *entry;

	template_check_variables(vars);
	check_lookup_names(name, ref);
	prompt_cache_check();
	entry = prompt_cache_lookup(name, ref);
	out->rollout_label = out->rollout_weights = NULL;
	if (entry->narms > 0)
	{
		out->rollout_label = pstrdup(entry->label);
		out->rollout_weights = pstrdup(entry->weights);
		entry = prompt_pick_arm(entry, sticky_key,
								sticky_key ? strlen(sticky_key) : 0);
	}
	out->name = text_to_cstring(entry->name);
	out->version = text_to_cstring(entry->version);
	out->checks = entry->checks;
	out->config = entry->config;
	render_entry(entry, vars, &out->content, &out->system, &out->messages);
	rendered_hash(out->system, out->content, out->messages, out->hash);
}

PG_FUNCTION_INFO_V1(prompt_render);
/*
 * maester.prompt_render(name text, variables jsonb DEFAULT '{}',
 *						 version text DEFAULT NULL,
 *						 sticky_key text DEFAULT NULL)
 *	 RETURNS maester.rendered_prompt
 *
 * `version` is a version or a label; NULL means latest.  A label in a
 * rollout picks one of its versions by `sticky_key`, or at random without
 * one.  `hash` is maester_prompt_hash() of what was rendered.
 */
Datum
prompt_render(PG_FUNCTION_ARGS)
{
	RenderCallCache *rc = (RenderCallCache *) fcinfo->flinfo->fn_extra;
	text	   *name_t;
	text	   *ref_t = NULL;
	text	   *key_t = NULL;
	Jsonb	   *vars = NULL;
	PromptCacheEntry *entry;
	text	   *content;
	text	   *system;
	text	   *hash;
	List	   *messages;
	Datum		values[7];
	bool		nulls[7] = {false, false, false, false, false, false, false};

	maester_check_catalog();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("prompt name must not be null")));
	name_t = PG_GETARG_TEXT_PP(0);
	if (!PG_ARGISNULL(1))
	{
		vars = PG_GETARG_JSONB_P(1);
		template_check_variables(vars);
	}
	if (!PG_ARGISNULL(2))
		ref_t = PG_GETARG_TEXT_PP(2);
	if (PG_NARGS() > 3 && !PG_ARGISNULL(3))
	{
		key_t = PG_GETARG_TEXT_PP(3);
		if (VARSIZE_ANY_EXHDR(key_t) == 0 || VARSIZE_ANY_EXHDR(key_t) > STICKY_KEY_MAX)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("sticky_key must be a non-empty text of at most %d bytes",
							STICKY_KEY_MAX)));
	}

	if (rc == NULL)
	{
		TupleDesc	tupdesc;
		MemoryContext oldcxt;

		if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "prompt_render must return a composite type");
		oldcxt = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
		rc = palloc0(sizeof(RenderCallCache));
		rc->tupdesc = BlessTupleDesc(CreateTupleDescCopy(tupdesc));
		MemoryContextSwitchTo(oldcxt);
		fcinfo->flinfo->fn_extra = rc;
	}

	prompt_cache_check();
	if (render_args_match(rc, name_t, ref_t))
		entry = rc->entry;
	else
	{
		char	   *name = text_to_cstring(name_t);
		char	   *ref = ref_t ? text_to_cstring(ref_t) : NULL;

		check_lookup_names(name, ref);
		rc->entry = NULL;
		entry = prompt_cache_lookup(name, ref);

		/* remember these arguments for the next row */
		rc->name_len = strlen(name);
		rc->ref_len = ref ? strlen(ref) : -1;
		memcpy(rc->args, name, rc->name_len);
		if (ref)
			memcpy(rc->args + rc->name_len, ref, rc->ref_len);
		rc->generation = PromptCacheGeneration;
		rc->entry = entry;
	}
	/* a rollout's label: this render's version */
	if (entry->narms > 0)
		entry = prompt_pick_arm(entry, key_t ? VARDATA_ANY(key_t) : NULL,
								key_t ? VARSIZE_ANY_EXHDR(key_t) : 0);

	render_entry(entry, vars, &content, &system, &messages);
	hash = (text *) palloc(VARHDRSZ + MAESTER_SHA256_HEXLEN + 1);
	rendered_hash(system, content, messages, VARDATA(hash));
	SET_VARSIZE(hash, VARHDRSZ + MAESTER_SHA256_HEXLEN);

	values[0] = PointerGetDatum(entry->name);
	values[1] = PointerGetDatum(entry->version);
	if (content)
		values[2] = PointerGetDatum(content);
	else
		nulls[2] = true;
	if (messages != NIL)
		values[6] = DirectFunctionCall1(jsonb_in, CStringGetDatum(messages_canonical(messages)));
	else
		nulls[6] = true;
	if (system)
		values[3] = PointerGetDatum(system);
	else
		nulls[3] = true;
	values[4] = PointerGetDatum(hash);
	values[5] = PointerGetDatum(entry->template_hash);

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(rc->tupdesc, values, nulls)));
}

/*-------------------------------------------------------------------------
 *
 * request.c
 *	  The first step of a call: its request, parsed and checked.
 *
 * A call's arguments come as llm_generate's SQL arguments, or as a request
 * object with the same names (generate_batch, submit, complete, the job
 * workers); its options as a JSON object.  Both are parsed here, once,
 * with the same rules and the same errors (22023, naming the member and
 * what it must be) whichever way the call came in.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>
#include <math.h>

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "datatype/timestamp.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "jsonutil.h"
#include "ledger.h"
#include "request.h"
#include "util.h"
#include "router.h"
#include "settings.h"
#include "template.h"

/* Raise 22023 for a bad option */
static void
option_error(const char *key, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("option \"%s\" must be %s", key, what)));
}

/* A numeric option value as double */
static double
option_number(JsonbValue *v, const char *key, double min, double max)
{
	double		d;

	if (v->type != jbvNumeric)
		option_error(key, psprintf("a number between %g and %g", min, max));
	d = json_numeric_double(v->val.numeric);
	if (!(d >= min && d <= max))
		option_error(key, psprintf("a number between %g and %g", min, max));
	return d;
}

/* An integer option value */
static int
option_int(JsonbValue *v, const char *key, int min, int max)
{
	double		d = option_number(v, key, min, max);

	if (d != floor(d))
		option_error(key, psprintf("an integer between %d and %d", min, max));
	return (int) d;
}

/*
 * options.extra: provider parameters maester does not model (seed, user,
 * reasoning_effort, service_tier, thinking, ...), passed through as members
 * of the request body.  An object, none of whose members maester writes
 * itself (they have their own arguments and options).
 */
static Jsonb *
option_extra(JsonbValue *v)
{
	static const char *const ours[] = {
		"model", "messages", "system", "max_tokens", "max_completion_tokens",
		"temperature", "top_p", "stop", "stop_sequences", "response_format", "stream",
		"tools", "tool_choice", "output_config", "input", "dimensions", "encoding_format",
		"n",					/* several answers billed, one read and reserved */
	};
	Jsonb	   *extra;
	JsonbIterator *it;
	JsonbValue	k;
	JsonbIteratorToken tok;

	if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
		option_error("extra", "a JSON object of request members");
	extra = JsonbValueToJsonb(v);
	it = JsonbIteratorInit(&extra->root);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		if (tok != WJB_KEY)
			continue;
		/* request members are identifiers: no "max_tokens " or "" */
		{
			bool		ident = k.val.string.len > 0 && k.val.string.len <= 64 &&
				!(k.val.string.val[0] >= '0' && k.val.string.val[0] <= '9');

			for (int i = 0; ident && i < k.val.string.len; i++)
			{
				char		ch = k.val.string.val[i];

				ident = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
					(ch >= '0' && ch <= '9') || ch == '_';
			}
			if (!ident)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("options.extra member \"%s\" is not a request member name",
								maester_cut_short(pnstrdup(k.val.string.val, k.val.string.len), 64)),
						 errdetail("Names are letters, digits and underscores, at most 64 bytes.")));
		}
		for (int i = 0; i < lengthof(ours); i++)
			if (k.val.string.len == strlen(ours[i]) &&
				memcmp(k.val.string.val, ours[i], k.val.string.len) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("options.extra may not set \"%s\"", ours[i]),
						 errhint("maester writes it: use the argument or option of that name.")));
	}
	return JsonContainerSize(&extra->root) > 0 ? extra : NULL;
}

/* A tool or schema name as both providers accept it: [a-zA-Z0-9_-]{1,64} */
static bool
valid_tool_name(const char *s, int len)
{
	if (len < 1 || len > 64)
		return false;
	for (int i = 0; i < len; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
			  (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-'))
			return false;
	return true;
}

/* A string member of container `c` that must be a tool name */
static char *
tool_name_of(JsonbContainer *c, const char *what)
{
	JsonbValue *v = json_get(c, "name");

	if (v == NULL || v->type != jbvString)
		option_error(what, "given with a \"name\"");
	if (!valid_tool_name(v->val.string.val, v->val.string.len))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s name \"%s\" is not valid", what,
						maester_cut_short(pnstrdup(v->val.string.val, v->val.string.len), 64)),
				 errdetail("Names are 1 to 64 letters, digits, underscores and dashes.")));
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/*
 * options.tools: an array of tool definitions, each {name, description,
 * parameters} (also OpenAI's {type: "function", function: {...}} and
 * Anthropic's {name, description, input_schema}), normalized.
 */
static List *
option_tools(JsonbValue *v)
{
	List	   *tools = NIL;
	int			n;

	if (v->type != jbvBinary || !JsonContainerIsArray(v->val.binary.data))
		option_error("tools", "an array of tool definitions");
	n = JsonContainerSize(v->val.binary.data);
	if (n > 128)
		option_error("tools", "an array of at most 128 tools");
	for (int i = 0; i < n; i++)
	{
		JsonbValue *e = getIthJsonbValueFromContainer(v->val.binary.data, i);
		JsonbContainer *def;
		JsonbValue *params;
		JsonbValue *desc;
		GenTool    *t = palloc0(sizeof(GenTool));
		char	   *type;
		ListCell   *lc;

		if (e->type != jbvBinary || !JsonContainerIsObject(e->val.binary.data))
			option_error("tools", "an array of tool definitions (objects)");
		def = e->val.binary.data;
		type = json_get_string(def, "type");
		if (type != NULL && strcmp(type, "function") == 0)
		{
			def = json_get_container(def, "function");
			if (def == NULL || !JsonContainerIsObject(def))
				option_error("tools", "function tools with a \"function\" object");
		}
		else if (type != NULL && strcmp(type, "custom") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("tool type \"%s\" is not supported", type),
					 errhint("Give function tools: {\"name\", \"description\", \"parameters\"}.")));
		t->name = tool_name_of(def, "tool");
		foreach(lc, tools)
			if (strcmp(((GenTool *) lfirst(lc))->name, t->name) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("tool \"%s\" is defined twice", t->name)));
		desc = json_get(def, "description");
		if (desc != NULL && desc->type != jbvNull)
		{
			if (desc->type != jbvString)
				option_error("tools", "definitions whose \"description\" is a string");
			t->description = pnstrdup(desc->val.string.val, desc->val.string.len);
		}
		params = json_get(def, "parameters");
		if (params == NULL)
			params = json_get(def, "input_schema");
		if (params == NULL || params->type == jbvNull)
			t->parameters = pstrdup("{\"type\":\"object\",\"properties\":{}}");
		else if (params->type == jbvBinary && JsonContainerIsObject(params->val.binary.data))
		{
			char	   *type = json_get_string(params->val.binary.data, "type");

			/* both providers take an object schema only (Anthropic: 400 otherwise) */
			if (type == NULL || strcmp(type, "object") != 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("the parameters of tool \"%s\" must be a schema of \"type\": \"object\"",
								t->name)));
			t->parameters = json_value_text(params);
		}
		else
			option_error("tools", "definitions whose \"parameters\" is a JSON-schema object");
		{
			JsonbValue *strict = json_get(def, "strict");

			t->strict = strict && strict->type == jbvBool ? strict->val.boolean : -1;
		}
		tools = lappend(tools, t);
	}
	return tools;
}

/*
 * options.tool_choice: "auto", "none", "required" (or Anthropic's "any"),
 * or one tool by name: {"name": ...} (also OpenAI's {"type": "function",
 * "function": {"name": ...}} and Anthropic's {"type": "tool", "name": ...}).
 */
static void
option_tool_choice(JsonbValue *v, GenRequest *gen)
{
	if (v->type == jbvString)
	{
		char	   *c = pnstrdup(v->val.string.val, v->val.string.len);

		if (strcmp(c, "auto") == 0)
			gen->tool_choice = TOOL_CHOICE_AUTO;
		else if (strcmp(c, "none") == 0)
			gen->tool_choice = TOOL_CHOICE_NONE;
		else if (strcmp(c, "required") == 0 || strcmp(c, "any") == 0)
			gen->tool_choice = TOOL_CHOICE_REQUIRED;
		else
			option_error("tool_choice", "\"auto\", \"none\", \"required\" or {\"name\": tool}");
		return;
	}
	if (v->type == jbvBinary && JsonContainerIsObject(v->val.binary.data))
	{
		JsonbContainer *c = v->val.binary.data;
		char	   *type = json_get_string(c, "type");

		if (type && strcmp(type, "function") == 0)
			c = json_get_container(c, "function");
		else if (type && strcmp(type, "tool") != 0)
		{
			/* Anthropic's {"type": "auto" | "any" | "none"} */
			JsonbValue	s;

			s.type = jbvString;
			s.val.string.val = type;
			s.val.string.len = strlen(type);
			option_tool_choice(&s, gen);
			return;
		}
		if (c != NULL && JsonContainerIsObject(c))
		{
			gen->tool_choice = TOOL_CHOICE_NAMED;
			gen->tool_choice_name = tool_name_of(c, "tool_choice");
			return;
		}
	}
	option_error("tool_choice", "\"auto\", \"none\", \"required\" or {\"name\": tool}");
}

/*
 * options.response_format {"type": "json_schema", "json_schema": {name,
 * schema, strict, description}}, OpenAI's shape: the answer must be a JSON
 * value of that schema.
 */
static void
option_json_schema(JsonbContainer *rf, GenRequest *gen)
{
	JsonbValue *spec = json_get(rf, "json_schema");
	JsonbValue *schema;
	JsonbValue *strict;

	if (spec == NULL || spec->type != jbvBinary ||
		!JsonContainerIsObject(spec->val.binary.data))
		option_error("response_format", "{\"type\": \"json_schema\", \"json_schema\": {\"name\": ..., \"schema\": {...}}}");
	gen->schema_name = tool_name_of(spec->val.binary.data, "response_format json_schema");
	schema = json_get(spec->val.binary.data, "schema");
	if (schema == NULL || schema->type != jbvBinary ||
		!JsonContainerIsObject(schema->val.binary.data))
		option_error("response_format", "a json_schema whose \"schema\" is a JSON-schema object");
	{
		char	   *type = json_get_string(schema->val.binary.data, "type");

		/* an object at the root: OpenAI's strict mode and Anthropic's tool need one */
		if (type == NULL || strcmp(type, "object") != 0)
			option_error("response_format", "a json_schema whose schema is of \"type\": \"object\"");
	}
	strict = json_get(spec->val.binary.data, "strict");
	if (strict != NULL && strict->type != jbvBool && strict->type != jbvNull)
		option_error("response_format", "a json_schema whose \"strict\" is a boolean");
	gen->schema = json_value_text(schema);
	gen->schema_spec = json_value_text(spec);
}

/*
 * options.cache_control: where Anthropic's prompt cache breakpoint goes --
 * "system", "prefix" (the system prompt and the conversation before its
 * last turn), or {"at": one of them, "ttl": "5m" | "1h"}
 */
static void
option_cache_control(JsonbValue *v, GenRequest *gen)
{
	const char *what = "\"system\", \"prefix\" or {\"at\": \"system\" | \"prefix\", \"ttl\": \"5m\" | \"1h\"}";
	char	   *at = NULL;

	gen->cache_1h = false;
	if (v->type == jbvString)
		at = pnstrdup(v->val.string.val, v->val.string.len);
	else if (v->type == jbvBinary && JsonContainerIsObject(v->val.binary.data))
	{
		JsonbIterator *it = JsonbIteratorInit(v->val.binary.data);
		JsonbValue	k;
		JsonbIteratorToken tok;

		while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
		{
			JsonbValue	val;
			char	   *key;

			if (tok != WJB_KEY)
				continue;
			key = pnstrdup(k.val.string.val, k.val.string.len);
			(void) JsonbIteratorNext(&it, &val, true);
			if (val.type != jbvString)
				option_error("cache_control", what);
			if (strcmp(key, "at") == 0)
				at = pnstrdup(val.val.string.val, val.val.string.len);
			else if (strcmp(key, "ttl") == 0 &&
					 val.val.string.len == 2 &&
					 (memcmp(val.val.string.val, "5m", 2) == 0 ||
					  memcmp(val.val.string.val, "1h", 2) == 0))
				gen->cache_1h = memcmp(val.val.string.val, "1h", 2) == 0;
			else
				option_error("cache_control", what);
		}
		if (at == NULL)
			at = pstrdup("prefix");
	}
	if (at && strcmp(at, "system") == 0)
		gen->cache_at = CACHE_SYSTEM;
	else if (at && strcmp(at, "prefix") == 0)
		gen->cache_at = CACHE_PREFIX;
	else
		option_error("cache_control", what);
}

/*
 * options.cache: true, false, or {"ttl": "<interval>", "any_temperature":
 * <boolean>}; an object turns the cache on.
 */
static void
option_cache(JsonbValue *v, CallOptions *o)
{
	const char *what = "true, false or {\"ttl\": \"<interval>\", \"any_temperature\": true}";

	o->cache_given = true;
	o->cache_ttl_us = 0;
	o->cache_any_temperature = false;
	if (v->type == jbvBool)
	{
		o->cache = v->val.boolean;
		return;
	}
	if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
		option_error("cache", what);
	o->cache = true;
	{
		JsonbIterator *it = JsonbIteratorInit(v->val.binary.data);
		JsonbValue	k,
					e;
		JsonbIteratorToken tok;

		while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
		{
			if (tok != WJB_KEY)
				continue;
			(void) JsonbIteratorNext(&it, &e, true);
			if (k.val.string.len == 3 && memcmp(k.val.string.val, "ttl", 3) == 0)
			{
				Interval   *iv;
				int64		us;

				if (e.type != jbvString)
					option_error("cache.ttl", "an interval, like \"1 hour\"");
				iv = DatumGetIntervalP(DirectFunctionCall3(interval_in,
														   CStringGetDatum(pnstrdup(e.val.string.val, e.val.string.len)),
														   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)));
				/* months and days as 30 and 1 days, as interval comparison does */
				us = iv->time + ((int64) iv->month * DAYS_PER_MONTH + iv->day) * USECS_PER_DAY;
				if (iv->month < 0 || iv->day < 0 || us <= 0 || us > (int64) 3650 * USECS_PER_DAY)
					option_error("cache.ttl", "an interval above 0 and at most 10 years");
				o->cache_ttl_us = us;
			}
			else if (k.val.string.len == 15 && memcmp(k.val.string.val, "any_temperature", 15) == 0)
			{
				if (e.type != jbvBool)
					option_error("cache.any_temperature", "a boolean");
				o->cache_any_temperature = e.val.boolean;
			}
			else
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("unknown member \"%.*s\" of option \"cache\"", k.val.string.len, k.val.string.val),
						 errhint("cache is %s.", what)));
		}
	}
}

/*
 * Parse and check the options object (NULL: the defaults), each option on
 * its own; raises 22023.  request_check_options checks them together.
 */
void
request_parse_options_alone(Jsonb *opts, CallOptions *o)
{
	JsonbIterator *it;
	JsonbValue	k;
	JsonbIteratorToken tok;

	memset(o, 0, sizeof(*o));
	o->timeout_ms = maester_request_timeout_ms;
	o->fallback = true;
	if (opts == NULL)
		return;
	if (!JB_ROOT_IS_OBJECT(opts))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("options must be a JSON object"),
				 errhint("Known options: " KNOWN_OPTIONS ".")));

	it = JsonbIteratorInit(&opts->root);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		char	   *key;
		JsonbValue	v;

		if (tok != WJB_KEY)
			continue;
		key = pnstrdup(k.val.string.val, k.val.string.len);
		tok = JsonbIteratorNext(&it, &v, true);

		if (strcmp(key, "temperature") == 0)
		{
			o->gen.has_temperature = true;
			o->gen.temperature = option_number(&v, key, 0, 2);
		}
		else if (strcmp(key, "top_p") == 0)
		{
			o->gen.has_top_p = true;
			o->gen.top_p = option_number(&v, key, 0, 1);
		}
		else if (strcmp(key, "stop") == 0)
		{
			if (v.type == jbvString)
				o->gen.stop = list_make1(pnstrdup(v.val.string.val, v.val.string.len));
			else if (v.type == jbvBinary && JsonContainerIsArray(v.val.binary.data))
			{
				int			n = JsonContainerSize(v.val.binary.data);

				for (int i = 0; i < n; i++)
				{
					JsonbValue *e = getIthJsonbValueFromContainer(v.val.binary.data, i);

					if (e->type != jbvString)
						option_error(key, "a string or an array of strings");
					o->gen.stop = lappend(o->gen.stop,
										  pnstrdup(e->val.string.val, e->val.string.len));
				}
			}
			else
				option_error(key, "a string or an array of strings");
		}
		else if (strcmp(key, "response_format") == 0)
		{
			char	   *fmt = NULL;

			o->gen.json_format = false;
			o->gen.schema = o->gen.schema_name = o->gen.schema_spec = NULL;
			if (v.type == jbvString)
				fmt = pnstrdup(v.val.string.val, v.val.string.len);
			else if (v.type == jbvBinary)
				fmt = json_get_string(v.val.binary.data, "type");
			if (fmt && (strcmp(fmt, "json") == 0 || strcmp(fmt, "json_object") == 0))
				o->gen.json_format = true;
			else if (fmt && v.type == jbvBinary && strcmp(fmt, "json_schema") == 0)
				option_json_schema(v.val.binary.data, &o->gen);
			else if (!fmt || strcmp(fmt, "text") != 0)
				option_error(key, "\"json\", \"text\", {\"type\": \"json_object\"} or {\"type\": \"json_schema\", \"json_schema\": {...}}");
		}
		else if (strcmp(key, "extra") == 0)
			o->gen.extra = option_extra(&v);
		else if (strcmp(key, "tools") == 0)
			o->gen.tools = option_tools(&v);
		else if (strcmp(key, "tool_choice") == 0)
			option_tool_choice(&v, &o->gen);
		else if (strcmp(key, "cache_control") == 0)
			option_cache_control(&v, &o->gen);
		else if (strcmp(key, "timeout_ms") == 0)
			o->timeout_ms = option_int(&v, key, 1, INT_MAX);
		else if (strcmp(key, "max_attempts") == 0)
			o->max_attempts = option_int(&v, key, 1, 20);
		else if (strcmp(key, "fallback") == 0)
		{
			if (v.type != jbvBool)
				option_error(key, "a boolean");
			o->fallback = v.val.boolean;
		}
		else if (strcmp(key, "tags") == 0)
		{
			StringInfoData t;

			if (v.type != jbvBinary || !JsonContainerIsObject(v.val.binary.data))
				option_error(key, "a JSON object");
			initStringInfo(&t);
			jsonb_to_compact_text(&t, v.val.binary.data);
			if (t.len >= (int) sizeof(((LedgerRecord *) NULL)->tags))
				option_error(key, psprintf("a JSON object of less than %d bytes",
										   (int) sizeof(((LedgerRecord *) NULL)->tags)));
			o->tags = t.data;
		}
		else if (strcmp(key, "sticky_key") == 0)
		{
			if (v.type == jbvNull)
				o->sticky_key = NULL;
			else if (v.type != jbvString || v.val.string.len == 0 || v.val.string.len > STICKY_KEY_MAX)
				option_error(key, psprintf("a non-empty string of at most %d bytes", STICKY_KEY_MAX));
			else
				o->sticky_key = pnstrdup(v.val.string.val, v.val.string.len);
		}
		else if (strcmp(key, "cache") == 0)
			option_cache(&v, o);
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown option \"%s\"", key),
					 errhint("Known options: " KNOWN_OPTIONS ".")));
	}
}

/*
 * The options together (tool_choice needs tools and names one of them; a
 * json_schema's name is not a tool's): once a prompt version's config has
 * been merged in, since tools may come from it.  Raises 22023.
 */
void
request_check_options(const CallOptions *o)
{
	ListCell   *lc;

	if (o->gen.tool_choice != TOOL_CHOICE_DEFAULT && o->gen.tools == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"tool_choice\" needs option \"tools\"")));
	if (o->gen.tool_choice == TOOL_CHOICE_NAMED)
	{
		bool		found = false;

		foreach(lc, o->gen.tools)
			found |= strcmp(((GenTool *) lfirst(lc))->name, o->gen.tool_choice_name) == 0;
		if (!found)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("tool_choice names tool \"%s\", which is not among the tools",
							o->gen.tool_choice_name)));
	}
	if (o->gen.schema_name)
		foreach(lc, o->gen.tools)
			if (strcmp(((GenTool *) lfirst(lc))->name, o->gen.schema_name) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("response_format json_schema \"%s\" has the name of a tool", o->gen.schema_name),
						 errhint("At Anthropic the schema is a tool of its own: give it another name.")));
}

/* Parse the options object and check them together; raises 22023 */
void
request_parse_options(Jsonb *opts, CallOptions *o)
{
	request_parse_options_alone(opts, o);
	request_check_options(o);
}

/* Raise 22023 for a bad request member */
static void
request_error(const char *key, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("request member \"%s\" must be %s", key, what)));
}

/* A string member (or JSON null) of a request */
static text *
request_text(JsonbValue *v, const char *key)
{
	if (v->type == jbvNull)
		return NULL;
	if (v->type != jbvString)
		request_error(key, "a string");
	return cstring_to_text_with_len(v->val.string.val, v->val.string.len);
}

/* An object member (or JSON null) of a request, as its own Jsonb */
static Jsonb *
request_object(JsonbValue *v, const char *key)
{
	if (v->type == jbvNull)
		return NULL;
	if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
		request_error(key, "a JSON object");
	return JsonbValueToJsonb(v);
}

/*
 * A request -- an object with llm_generate's argument names -- as call
 * arguments.  Raises 22023.  *has_model says whether "model" was given
 * (null included).
 */
void
request_parse(Jsonb *req, CallArgs *a, bool *has_model)
{
	JsonbIterator *it;
	JsonbValue	k;
	JsonbIteratorToken tok;
	text	   *t;

	memset(a, 0, sizeof(*a));
	*has_model = false;
	if (!JB_ROOT_IS_OBJECT(req))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a request must be a JSON object"),
				 errhint("Its members are llm_generate's arguments: " REQUEST_KEYS ".")));

	it = JsonbIteratorInit(&req->root);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		char	   *key;
		JsonbValue	v;

		if (tok != WJB_KEY)
			continue;
		key = pnstrdup(k.val.string.val, k.val.string.len);
		tok = JsonbIteratorNext(&it, &v, true);
		if (strcmp(key, "prompt") == 0)
			a->prompt = request_text(&v, key);
		else if (strcmp(key, "messages") == 0)
		{
			if (v.type == jbvNull)
				continue;
			if (v.type != jbvBinary || !JsonContainerIsArray(v.val.binary.data))
				request_error(key, "an array of messages");
			a->messages = JsonbValueToJsonb(&v);
		}
		else if (strcmp(key, "system") == 0)
			a->system = request_text(&v, key);
		else if (strcmp(key, "model") == 0)
		{
			t = request_text(&v, key);
			a->model = t ? text_to_cstring(t) : NULL;
			*has_model = true;
		}
		else if (strcmp(key, "prompt_name") == 0)
		{
			t = request_text(&v, key);
			a->prompt_name = t ? text_to_cstring(t) : NULL;
		}
		else if (strcmp(key, "prompt_version") == 0)
		{
			t = request_text(&v, key);
			a->prompt_version = t ? text_to_cstring(t) : NULL;
		}
		else if (strcmp(key, "variables") == 0)
			a->variables = request_object(&v, key);
		else if (strcmp(key, "options") == 0)
			a->options = request_object(&v, key);
		else if (strcmp(key, "max_tokens") == 0)
		{
			double		d;

			if (v.type == jbvNull)
				continue;
			if (v.type != jbvNumeric)
				request_error(key, "a positive integer");
			d = json_numeric_double(v.val.numeric);
			if (!(d >= 1 && d <= INT_MAX) || d != floor(d))
				request_error(key, "a positive integer");
			a->max_tokens = (int) d;
		}
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown request member \"%s\"", key),
					 errhint("Known members: " REQUEST_KEYS ".")));
	}
}

/*
 * Raise 22023 unless the arguments make a call: exactly one of prompt and
 * prompt_name, variables and prompt_version only with prompt_name, a
 * positive max_tokens, a model name a call may ask for.
 */
void
request_check_args(const CallArgs *a)
{
	if ((a->prompt != NULL) + (a->prompt_name != NULL) + (a->messages != NULL) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("give exactly one of prompt, messages and prompt_name"),
				 errhint("Pass prompt => 'text' for a raw prompt, messages => '[{\"role\": \"user\", \"content\": \"...\"}]' for a conversation, or prompt_name => 'name' to render one from the registry.")));
	if (a->messages != NULL && a->system != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("system does not go with messages"),
				 errhint("Put the system prompt in messages: {\"role\": \"system\", \"content\": \"...\"}.")));
	if (a->prompt_name == NULL && (a->variables != NULL || a->prompt_version != NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("variables and prompt_version go with prompt_name")));
	if (a->max_tokens < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_tokens must be positive")));
	if (a->model != NULL)
		router_check_model_name(a->model);
}

/*
 * A request object with defaults for the members it does not give (a
 * batch's model, prompt_name and options; the request's options win
 * member by member).  Raises 22023.
 */
void
request_with_defaults(Jsonb *req, text *model, text *prompt_name, Jsonb *options,
					  CallArgs *a)
{
	bool		has_model;

	request_parse(req, a, &has_model);
	if (!has_model && model)
		a->model = text_to_cstring(model);
	if (a->prompt == NULL && a->messages == NULL && a->prompt_name == NULL && prompt_name)
		a->prompt_name = text_to_cstring(prompt_name);
	if (options && a->options)
		a->options = DatumGetJsonbP(DirectFunctionCall2(jsonb_concat,
														JsonbPGetDatum(options),
														JsonbPGetDatum(a->options)));
	else if (options)
		a->options = options;
}

/* Check a request's shape (members, their types, options); raises 22023 */
void
request_validate(Jsonb *request)
{
	CallArgs	a;
	bool		has_model;
	CallOptions o;

	request_parse(request, &a, &has_model);
	request_check_args(&a);
	/* a prompt version's config may bring the tools a tool_choice names */
	if (a.prompt_name)
		request_parse_options_alone(a.options, &o);
	else
		request_parse_options(a.options, &o);
	if (a.messages)
		(void) request_messages(a.messages, NULL);
}

/* Most tool calls in one assistant message, and messages in a conversation */
#define MAX_TOOL_CALLS 256
#define MAX_MESSAGES 100000

/* Raise 22023 for a bad message */
static void
message_error(int i, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("message %d %s", i + 1, what),
			 errhint("A message is {\"role\": \"system\" | \"user\" | \"assistant\" | \"tool\", \"content\": \"...\"}; "
					 "an assistant's may carry \"tool_calls\": [{\"id\", \"name\", \"arguments\"}], "
					 "a tool's result names its \"tool_call_id\".")));
}

/*
 * A message's content: a string, or an array of text parts ({"type":
 * "text", "text": ...}, both providers' shape) concatenated; NULL for
 * null.
 */
static char *
message_content(JsonbValue *v, int i)
{
	StringInfoData t;
	int			n;

	if (v->type == jbvNull)
		return NULL;
	if (v->type == jbvString)
		return pnstrdup(v->val.string.val, v->val.string.len);
	if (v->type != jbvBinary || !JsonContainerIsArray(v->val.binary.data))
		message_error(i, "has a \"content\" that is not a string or an array of text parts");
	initStringInfo(&t);
	n = JsonContainerSize(v->val.binary.data);
	for (int k = 0; k < n; k++)
	{
		JsonbValue *part = getIthJsonbValueFromContainer(v->val.binary.data, k);
		char	   *type;
		char	   *text;

		if (part->type != jbvBinary || !JsonContainerIsObject(part->val.binary.data) ||
			(type = json_get_string(part->val.binary.data, "type")) == NULL ||
			strcmp(type, "text") != 0 ||
			(text = json_get_string(part->val.binary.data, "text")) == NULL)
			message_error(i, "has a content part that is not {\"type\": \"text\", \"text\": \"...\"} (only text is supported)");
		appendStringInfoString(&t, text);
	}
	return t.data;
}

/*
 * An assistant message's tool calls: our shape {id, name, arguments}
 * (what maester.generation.tool_calls holds, so that a tool loop appends
 * it as it came), or OpenAI's {id, type: "function", function: {name,
 * arguments: "<JSON text>"}}.  Arguments are kept as JSON text of an
 * object.
 */
static List *
message_tool_calls(JsonbValue *v, int i, int64 *chars)
{
	List	   *calls = NIL;
	int			n;

	if (v->type != jbvBinary || !JsonContainerIsArray(v->val.binary.data) ||
		(n = JsonContainerSize(v->val.binary.data)) == 0)
		message_error(i, "has \"tool_calls\" that are not a non-empty array");
	if (n > MAX_TOOL_CALLS)
		message_error(i, psprintf("has more than %d tool calls", MAX_TOOL_CALLS));
	for (int k = 0; k < n; k++)
	{
		JsonbValue *e = getIthJsonbValueFromContainer(v->val.binary.data, k);
		JsonbContainer *c;
		JsonbContainer *fn;
		JsonbValue *args;
		GenToolCall *tc = palloc0(sizeof(GenToolCall));

		if (e->type != jbvBinary || !JsonContainerIsObject(e->val.binary.data))
			message_error(i, "has a tool call that is not an object");
		c = e->val.binary.data;
		tc->id = json_get_string(c, "id");
		if (tc->id == NULL || tc->id[0] == '\0' || strlen(tc->id) > 256)
			message_error(i, "has a tool call without an \"id\" (of at most 256 bytes)");
		for (ListCell *lc = list_head(calls); lc; lc = lnext(calls, lc))
			if (strcmp(((GenToolCall *) lfirst(lc))->id, tc->id) == 0)
				message_error(i, psprintf("has two tool calls with id \"%s\"",
										  maester_cut_short(pstrdup(tc->id), 64)));
		fn = json_get_container(c, "function");
		if (fn != NULL && JsonContainerIsObject(fn))
			c = fn;
		tc->name = json_get_string(c, "name");
		if (tc->name == NULL || !valid_tool_name(tc->name, strlen(tc->name)))
			message_error(i, "has a tool call without a valid \"name\"");
		args = json_get(c, "arguments");
		if (args == NULL || args->type == jbvNull)
			tc->arguments = pstrdup("{}");
		else if (args->type == jbvString && fn != NULL)
		{
			/* OpenAI's shape: a string of JSON, kept a string when it is not JSON */
			char	   *problem = NULL;
			char	   *text = pnstrdup(args->val.string.val, args->val.string.len);
			Jsonb	   *parsed = json_parse_any(text, &problem);

			tc->arguments = parsed ? JsonbToCString(NULL, &parsed->root, VARSIZE(parsed)) :
				json_value_text(args);
		}
		else
		{
			/*
			 * Our shape: any JSON value, as generation.tool_calls gives it
			 * (a model's arguments that were not JSON are a JSON string
			 * there, and must go back as they came)
			 */
			tc->arguments = json_value_text(args);
		}
		if (chars)
			*chars += strlen(tc->name) + pg_mbstrlen(tc->arguments);
		calls = lappend(calls, tc);
	}
	return calls;
}

/*
 * Raise 22023 if tool calls are left unanswered at message i (n: the
 * end): both providers refuse a conversation that goes on without every
 * call's result
 */
static void
unanswered(List *open_calls, int i)
{
	if (open_calls == NIL)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("tool call \"%s\" has no result before %s",
					maester_cut_short(pstrdup((char *) linitial(open_calls)), 64),
					psprintf(i >= 0 ? "message %d" : "the end", i + 1)),
			 errhint("Each tool call of an assistant message is answered by a tool message ({\"role\": \"tool\", \"tool_call_id\": ..., \"content\": ...}) right after it.")));
}

/*
 * A conversation, checked and normalized: a list of GenMessage.  Raises
 * 22023 naming the message (1-based) and what is wrong with it.  Tool
 * results must follow the assistant message whose calls they answer (both
 * providers refuse anything else, after billing nothing; better to say so
 * here).  *chars (if not NULL) gets the characters of everything sent.
 */
List *
request_messages(Jsonb *messages, int64 *chars)
{
	List	   *out = NIL;
	int			n;
	int			nconv = 0;
	List	   *open_calls = NIL;	/* ids of the last assistant's tool calls */
	int64		total = 0;

	if (!JB_ROOT_IS_ARRAY(messages) || JB_ROOT_IS_SCALAR(messages))
		request_error("messages", "an array of messages");
	n = JsonContainerSize(&messages->root);
	if (n > MAX_MESSAGES)
		request_error("messages", psprintf("a conversation of at most %d messages", MAX_MESSAGES));
	for (int i = 0; i < n; i++)
	{
		JsonbValue *e = getIthJsonbValueFromContainer(&messages->root, i);
		JsonbContainer *c;
		GenMessage *m = palloc0(sizeof(GenMessage));
		JsonbIterator *it;
		JsonbValue	k;
		JsonbIteratorToken tok;
		char	   *role;
		bool		has_content = false;

		if (e->type != jbvBinary || !JsonContainerIsObject(e->val.binary.data))
			message_error(i, "is not a JSON object");
		c = e->val.binary.data;
		role = json_get_string(c, "role");
		if (role == NULL ||
			(strcmp(role, "system") != 0 && strcmp(role, "user") != 0 &&
			 strcmp(role, "assistant") != 0 && strcmp(role, "tool") != 0))
			message_error(i, "has no \"role\" of system, user, assistant or tool");
		m->role = role;
		it = JsonbIteratorInit(c);
		while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
		{
			char	   *key;
			JsonbValue	v;

			if (tok != WJB_KEY)
				continue;
			key = pnstrdup(k.val.string.val, k.val.string.len);
			(void) JsonbIteratorNext(&it, &v, true);
			if (strcmp(key, "role") == 0)
				continue;
			else if (strcmp(key, "content") == 0)
			{
				m->content = message_content(&v, i);
				has_content = true;
			}
			else if (strcmp(key, "tool_calls") == 0 && strcmp(role, "assistant") == 0)
			{
				if (v.type != jbvNull)
					m->tool_calls = message_tool_calls(&v, i, &total);
			}
			else if (strcmp(key, "tool_call_id") == 0 && strcmp(role, "tool") == 0)
			{
				if (v.type != jbvString || v.val.string.len == 0)
					message_error(i, "has a \"tool_call_id\" that is not a string");
				m->tool_call_id = pnstrdup(v.val.string.val, v.val.string.len);
			}
			else if (strcmp(key, "refusal") == 0 && strcmp(role, "assistant") == 0 &&
					 v.type == jbvNull)
				continue;		/* OpenAI's assistant messages carry refusal: null */
			else
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("message %d (%s) has an unknown member \"%s\"", i + 1, role,
								maester_cut_short(key, 64)),
						 errhint("Members are role and content; tool_calls for an assistant, tool_call_id for a tool.")));
		}
		CHECK_FOR_INTERRUPTS();
		if (m->content == NULL && m->tool_calls == NIL)
			message_error(i, has_content ? "has a null \"content\"" : "has no \"content\"");
		/* providers refuse empty text (Anthropic: 400); a tool's result may be empty */
		if (m->content != NULL && m->content[0] == '\0' && m->tool_calls == NIL &&
			strcmp(role, "tool") != 0)
			message_error(i, "has an empty \"content\"");
		if (strcmp(role, "tool") == 0)
		{
			ListCell   *lc;
			bool		found = false;

			if (m->tool_call_id == NULL)
				message_error(i, "is a tool result without a \"tool_call_id\"");
			foreach(lc, open_calls)
			{
				if (strcmp((char *) lfirst(lc), m->tool_call_id) == 0)
				{
					/* answered: each call is answered once */
					open_calls = foreach_delete_current(open_calls, lc);
					found = true;
					break;
				}
			}
			if (!found)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("message %d answers tool call \"%s\", which the assistant message before it did not make (or another message answered)",
								i + 1, maester_cut_short(pstrdup(m->tool_call_id), 64)),
						 errhint("Tool results follow the assistant message with their tool_calls, one for each call.")));
		}
		else
		{
			ListCell   *lc;

			unanswered(open_calls, i);
			foreach(lc, m->tool_calls)
				open_calls = lappend(open_calls, ((GenToolCall *) lfirst(lc))->id);
		}
		if (strcmp(role, "system") != 0)
			nconv++;
		if (m->content)
			total += pg_mbstrlen(m->content);
		out = lappend(out, m);
	}
	unanswered(open_calls, -1);
	if (nconv == 0)
		request_error("messages", "a conversation with at least one user, assistant or tool message");
	if (chars)
		*chars = total;
	return out;
}

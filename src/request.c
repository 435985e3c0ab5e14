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
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

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

/* Parse and check the options object (NULL: the defaults); raises 22023 */
void
request_parse_options(Jsonb *opts, CallOptions *o)
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

			if (v.type == jbvString)
				fmt = pnstrdup(v.val.string.val, v.val.string.len);
			else if (v.type == jbvBinary)
				fmt = json_get_string(v.val.binary.data, "type");
			if (fmt && (strcmp(fmt, "json") == 0 || strcmp(fmt, "json_object") == 0))
				o->gen.json_format = true;
			else if (fmt && strcmp(fmt, "text") == 0)
				o->gen.json_format = false;
			else
				option_error(key, "\"json\", \"text\" or {\"type\": \"json_object\"}");
		}
		else if (strcmp(key, "extra") == 0)
			o->gen.extra = option_extra(&v);
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
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown option \"%s\"", key),
					 errhint("Known options: " KNOWN_OPTIONS ".")));
	}
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
	if ((a->prompt == NULL) == (a->prompt_name == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("give exactly one of prompt and prompt_name"),
				 errhint("Pass prompt => 'text' for a raw prompt, or prompt_name => 'name' to render one from the registry.")));
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
	if (a->prompt == NULL && a->prompt_name == NULL && prompt_name)
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
	request_parse_options(a.options, &o);
}

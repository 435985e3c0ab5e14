/*-------------------------------------------------------------------------
 *
 * jsonutil.c
 *	  Reading JSON that comes from outside -- a provider's answer, a
 *	  grader's verdict, an option object -- without ever throwing on what
 *	  it contains.
 *
 * A body is parsed with jsonb_in; a parse error is caught and turned into
 * a "problem" string (jsonb_in holds no resources, so catching its error
 * without a subtransaction is safe), so malformed answers become clear
 * errors of the caller's choosing, never crashes.  The accessors return
 * NULL (or false) for a member that is absent or of another type.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "common/shortest_dec.h"

#include "jsonutil.h"

/*
 * Parse `text` as any JSON value (a model's tool arguments or structured
 * answer); NULL with *problem when it is not JSON.
 */
Jsonb *
json_parse_any(const char *text, char **problem)
{
	MemoryContext cxt = CurrentMemoryContext;
	Jsonb	   *jb = NULL;

	PG_TRY();
	{
		jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		*problem = pstrdup(edata->message);
		FreeErrorData(edata);
		return NULL;
	}
	PG_END_TRY();
	return jb;
}

/*
 * Parse `body` as JSON.  Returns NULL and sets *problem when it is not
 * valid JSON (or not an object).
 */
Jsonb *
json_parse_object(const char *body, char **problem)
{
	Jsonb	   *jb = json_parse_any(body, problem);

	if (jb == NULL)
	{
		*problem = psprintf("the response is not valid JSON (%s)", *problem);
		return NULL;
	}
	if (!JB_ROOT_IS_OBJECT(jb))
	{
		*problem = pstrdup("the response is not a JSON object");
		return NULL;
	}
	return jb;
}

/* A JSON value (scalar or container) as compact JSON text */
char *
json_value_text(JsonbValue *v)
{
	Jsonb	   *j = JsonbValueToJsonb(v);

	return JsonbToCString(NULL, &j->root, VARSIZE(j));
}

/* The value of `key` in object container `c`, or NULL */
JsonbValue *
json_get(JsonbContainer *c, const char *key)
{
	if (c == NULL || !JsonContainerIsObject(c))
		return NULL;
	return getKeyJsonValueFromContainer(c, key, strlen(key), NULL);
}

/* A string member as a palloc'd C string, or NULL */
char *
json_get_string(JsonbContainer *c, const char *key)
{
	JsonbValue *v = json_get(c, key);

	if (v == NULL || v->type != jbvString)
		return NULL;
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/*
 * A JSON number as a double, never throwing: beyond the range of double
 * precision it is +-Infinity, too close to zero it is 0.  (numeric_float8
 * raises 22003 for 1e400 or 1e-400, echoing all of its digits.)  Callers
 * that take a number check its range and name what it is for.
 */
double
json_numeric_double(Numeric n)
{
	return DatumGetFloat8(DirectFunctionCall1(numeric_float8_no_overflow,
											  NumericGetDatum(n)));
}

/* An integer member; false when absent, not a number, or not integral */
bool
json_get_int64(JsonbContainer *c, const char *key, int64 *out)
{
	JsonbValue *v = json_get(c, key);
	double		d;

	if (v == NULL || v->type != jbvNumeric)
		return false;
	d = json_numeric_double(v->val.numeric);
	if (!(d >= 0 && d <= 9007199254740992.0) || d != (double) (int64) d)
		return false;
	*out = (int64) d;
	return true;
}

/* An object or array member, or NULL */
JsonbContainer *
json_get_container(JsonbContainer *c, const char *key)
{
	JsonbValue *v = json_get(c, key);

	if (v == NULL || v->type != jbvBinary)
		return NULL;
	return v->val.binary.data;
}

/*
 * Append each member of the object `obj` (NULL: none) as ,"key":value --
 * options.extra, passed through to a provider's request body.
 */
void
json_append_members(StringInfo out, Jsonb *obj)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;

	if (obj == NULL)
		return;
	it = JsonbIteratorInit(&obj->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			appendStringInfoChar(out, ',');
			escape_json(out, pnstrdup(v.val.string.val, v.val.string.len));
			appendStringInfoChar(out, ':');
		}
		else if (tok == WJB_VALUE)
			appendStringInfoString(out, json_value_text(&v));
	}
}

/*
 * Append ,"key":number in the shortest form that reads back as the same
 * double (0.2, not 0.20000000000000001); `v` must be finite.
 */
void
json_append_number_member(StringInfo out, const char *key, double v)
{
	char		buf[DOUBLE_SHORTEST_DECIMAL_LEN];

	double_to_shortest_decimal_buf(v, buf);
	appendStringInfoChar(out, ',');
	escape_json(out, key);
	appendStringInfoChar(out, ':');
	appendStringInfoString(out, buf);
}

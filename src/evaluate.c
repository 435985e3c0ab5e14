/*-------------------------------------------------------------------------
 *
 * evaluate.c
 *	  The checks on a model's output, scored and weighted (maester.evaluate).
 *
 * The result is the articles' shape: {status, reliability_score,
 * metrics: [{name, score, passed, reason}]}.  The original toolkit's three
 * checks keep their exact semantics:
 *	 - non_empty (always run): whitespace-only is empty; reason
 *	   "Response is empty";
 *	 - required_terms: case-insensitive substrings; score 1 - missing/total;
 *	   reason "Missing terms: a, b";
 *	 - max_length (characters): when failing, score max/length; reason
 *	   "Length N exceeds max M";
 * and reliability_score is the mean of the scores rounded to 4 places,
 * status pass when every check passed.
 *
 * More checks, weights and a threshold follow promptfoo: each check may
 * carry a weight (0: informational, it always passes); the score is
 * sum(score x weight) / sum(weight); with a threshold the result passes
 * when score >= threshold, else when no check failed.  A not_ prefix
 * negates a check (score 1 - s).
 *
 * `checks` is an object ({"required_terms": [...], "max_length": 500,
 * "threshold": 0.8}), an array of assertions (["is_json", {"type": "regex",
 * "value": "^ok", "weight": 2}]), or {"assert": [...], "threshold": x}.
 * NULL means the articles' default: non_empty and max_length 500.
 * `context` may give cost_usd and latency_ms (for cost_max, latency_max),
 * response_schema (checked after non_empty), sources (citecheck.c).
 * One pass over the checks, the content lower-cased once at most.
 *
 * This file is the checks alone: it calls no model.  An llm_rubric check
 * is handed to the caller's grader (RubricGrader), which the call machine
 * answers with grading calls of its own (machine.c) and maester.evaluate()
 * with a batch of them (generate.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <limits.h>
#include <math.h>

#include "catalog/pg_collation.h"
#include "common/jsonapi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "regex/regex.h"
#include "utils/builtins.h"
#include "utils/formatting.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/varlena.h"

#include "catalog.h"
#include "citecheck.h"
#include "evaluate.h"
#include "jsonutil.h"

#define KNOWN_CHECKS "non_empty, required_terms, max_length, min_length, max_words, contains, icontains, contains_any, contains_all, not_contains, starts_with, equals, regex, is_json, json_schema, levenshtein, cost_max, latency_max, llm_rubric, citations_valid, citation_coverage, citation_support (and not_ before any of them)"

/* The content being evaluated, with what checks derive from it */
typedef struct EvalInput
{
	const char *s;
	int			len;			/* bytes */
	int			nchars;			/* -1: not computed */
	char	   *lower;			/* NULL: not computed */
	int			lower_len;
	JsonbContainer *context;	/* NULL: none */
	bool		validate_only;	/* check the checks, do not run costly ones */
	RubricGrader grader;		/* grades llm_rubric checks */
	void	   *grader_arg;
} EvalInput;

/* One metric of the result */
typedef struct Metric
{
	char	   *name;
	double		score;
	bool		passed;
	char	   *reason;			/* NULL when passed */
	double		weight;
} Metric;

static int
input_chars(EvalInput *in)
{
	if (in->nchars < 0)
		in->nchars = pg_mbstrlen_with_len(in->s, in->len);
	return in->nchars;
}

static const char *
input_lower(EvalInput *in)
{
	if (in->lower == NULL)
	{
		in->lower = str_tolower(in->s, in->len, DEFAULT_COLLATION_OID);
		in->lower_len = strlen(in->lower);
	}
	return in->lower;
}

/* memmem on possibly non-NUL-terminated buffers; interruptible on big inputs */
static bool
contains_bytes(const char *hay, int hlen, const char *needle, int nlen)
{
	if (nlen == 0)
		return true;
	for (int i = 0; i + nlen <= hlen; i++)
	{
		if ((i & 0xffff) == 0xffff)
			CHECK_FOR_INTERRUPTS();
		if (hay[i] == needle[0] && memcmp(hay + i, needle, nlen) == 0)
			return true;
	}
	return false;
}

static bool
contains_ci(EvalInput *in, const char *term)
{
	const char *l = input_lower(in);
	char	   *t = str_tolower(term, strlen(term), DEFAULT_COLLATION_OID);

	return contains_bytes(l, in->lower_len, t, strlen(t));
}

static void
check_error(const char *check, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("check \"%s\" needs %s", check, what)));
}

/* A parameter as a C string */
static char *
param_string(const char *check, JsonbValue *v)
{
	if (v == NULL || v->type != jbvString)
		check_error(check, "a string");
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/*
 * A parameter as a number; raises 22003, naming the check, for one beyond
 * double precision (rather than numeric_float8's error, which names
 * nothing and echoes every digit of 1e400).
 */
static double
param_number(const char *check, JsonbValue *v)
{
	double		d;

	if (v == NULL || v->type != jbvNumeric)
		check_error(check, "a number");
	d = json_numeric_double(v->val.numeric);
	if (isinf(d))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("number of check \"%s\" is out of range", check),
				 errdetail("Numbers in checks are double precision: at most about 1.8e308 in absolute value.")));
	return d;
}

/* A parameter as a list of strings (a lone string counts as one) */
static List *
param_strings(const char *check, JsonbValue *v)
{
	List	   *result = NIL;

	if (v != NULL && v->type == jbvString)
		return list_make1(pnstrdup(v->val.string.val, v->val.string.len));
	if (v == NULL || v->type != jbvBinary || !JsonContainerIsArray(v->val.binary.data))
		check_error(check, "a string or an array of strings");
	for (int i = 0; i < JsonContainerSize(v->val.binary.data); i++)
	{
		JsonbValue *e = getIthJsonbValueFromContainer(v->val.binary.data, i);

		if (e->type != jbvString)
			check_error(check, "an array of strings");
		result = lappend(result, pnstrdup(e->val.string.val, e->val.string.len));
	}
	return result;
}

/* Join quoted-free terms: "a, b" */
static char *
join_terms(List *terms)
{
	StringInfoData s;
	ListCell   *lc;

	initStringInfo(&s);
	foreach(lc, terms)
	{
		if (s.len)
			appendStringInfoString(&s, ", ");
		appendStringInfoString(&s, (char *) lfirst(lc));
	}
	return s.data;
}

/* A number from the context object, or false; raises 22003 beyond double precision */
static bool
context_number(EvalInput *in, const char *key, double *out)
{
	JsonbValue *v = in->context ? json_get(in->context, key) : NULL;

	if (v == NULL || v->type != jbvNumeric)
		return false;
	*out = json_numeric_double(v->val.numeric);
	if (isinf(*out))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("context.%s is out of range", key),
				 errdetail("It must be a double precision number: at most about 1.8e308 in absolute value.")));
	return true;
}

/* Is `s` (len bytes) valid JSON?  Never throws. */
static bool
is_valid_json(const char *s, int len)
{
	/* need_escapes: \u0000 and lone surrogates, which jsonb refuses, are errors too */
	JsonLexContext *lex = makeJsonLexContextCstringLen((char *) s, len,
													   GetDatabaseEncoding(), true);

	return pg_parse_json(lex, &nullSemAction) == JSON_SUCCESS;
}

/* ---- json_schema ---- */

/* Compare JSON numbers exactly: bounds and outputs need not fit a double */
static int
numeric_compare(Numeric a, Numeric b)
{
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(a),
											 NumericGetDatum(b)));
}

/* A JSON number for a reason: %g, or from its digits beyond a double (1e400) */
static char *
number_text(Numeric n)
{
	double		d = json_numeric_double(n);

	if (isinf(d) || (d == 0 && numeric_compare(n, int64_to_numeric(0)) != 0))
		return numeric_out_sci(n, 5);
	return psprintf("%g", d);
}

static const char *
jbv_type_name(JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			return "null";
		case jbvString:
			return "string";
		case jbvNumeric:
			return "number";
		case jbvBool:
			return "boolean";
		case jbvBinary:
			return JsonContainerIsArray(v->val.binary.data) ? "array" : "object";
		default:
			return "?";
	}
}

static bool
schema_type_matches(const char *type, JsonbValue *v)
{
	if (strcmp(type, "integer") == 0)
	{
		if (v->type != jbvNumeric)
			return false;
		return DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(v->val.numeric),
												DirectFunctionCall1(numeric_floor,
																	NumericGetDatum(v->val.numeric))));
	}
	return strcmp(type, jbv_type_name(v)) == 0;
}

static void
schema_error(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid json_schema: %s", what),
			 errhint("Supported keywords: type, required, properties, enum, items, minimum, maximum, minLength, maxLength.")));
}

static bool
known_type(const char *t)
{
	return strcmp(t, "object") == 0 || strcmp(t, "array") == 0 || strcmp(t, "string") == 0 ||
		strcmp(t, "number") == 0 || strcmp(t, "integer") == 0 || strcmp(t, "boolean") == 0 ||
		strcmp(t, "null") == 0;
}

/* Does `v` have one of the types of keyword `kw` (checked to be valid)? */
static bool
schema_validate_type_only(JsonbValue *kw, JsonbValue *v)
{
	bool		ok = false;

	if (kw->type == jbvString)
	{
		char	   *t = pnstrdup(kw->val.string.val, kw->val.string.len);

		if (!known_type(t))
			schema_error(psprintf("unknown type \"%s\"", t));
		return schema_type_matches(t, v);
	}
	if (kw->type != jbvBinary || !JsonContainerIsArray(kw->val.binary.data))
		schema_error("\"type\" must be a string or an array of strings");
	for (int i = 0; i < JsonContainerSize(kw->val.binary.data); i++)
	{
		JsonbValue *t = getIthJsonbValueFromContainer(kw->val.binary.data, i);
		char	   *name;

		if (t->type != jbvString)
			schema_error("\"type\" must be a string or an array of strings");
		name = pnstrdup(t->val.string.val, t->val.string.len);
		if (!known_type(name))
			schema_error(psprintf("unknown type \"%s\"", name));
		ok |= schema_type_matches(name, v);
	}
	return ok;
}

/*
 * Check that `schema` is a schema we understand, whatever the content, so
 * that a broken schema is an error even when the output is not JSON.
 */
static void
schema_check(JsonbContainer *schema)
{
	JsonbValue *kw;
	static const char *const numeric_kw[] = {"minimum", "maximum", "minLength", "maxLength"};

	if (schema == NULL || !JsonContainerIsObject(schema))
		schema_error("a schema must be an object");
	if ((kw = json_get(schema, "type")) != NULL)
	{
		JsonbValue	null_value;

		null_value.type = jbvNull;
		(void) schema_validate_type_only(kw, &null_value);
	}
	if ((kw = json_get(schema, "enum")) != NULL &&
		(kw->type != jbvBinary || !JsonContainerIsArray(kw->val.binary.data)))
		schema_error("\"enum\" must be an array");
	for (int i = 0; i < lengthof(numeric_kw); i++)
		if ((kw = json_get(schema, numeric_kw[i])) != NULL && kw->type != jbvNumeric)
			schema_error(psprintf("\"%s\" must be a number", numeric_kw[i]));
	if ((kw = json_get(schema, "required")) != NULL)
	{
		if (kw->type != jbvBinary || !JsonContainerIsArray(kw->val.binary.data))
			schema_error("\"required\" must be an array of strings");
		for (int i = 0; i < JsonContainerSize(kw->val.binary.data); i++)
			if (getIthJsonbValueFromContainer(kw->val.binary.data, i)->type != jbvString)
				schema_error("\"required\" must be an array of strings");
	}
	if ((kw = json_get(schema, "properties")) != NULL)
	{
		JsonbIterator *it;
		JsonbValue	key;
		JsonbIteratorToken tok;

		if (kw->type != jbvBinary || !JsonContainerIsObject(kw->val.binary.data))
			schema_error("\"properties\" must be an object");
		it = JsonbIteratorInit(kw->val.binary.data);
		while ((tok = JsonbIteratorNext(&it, &key, true)) != WJB_DONE)
		{
			JsonbValue	sub;

			if (tok != WJB_KEY)
				continue;
			(void) JsonbIteratorNext(&it, &sub, true);
			if (sub.type != jbvBinary)
				schema_error("each property's schema must be an object");
			schema_check(sub.val.binary.data);
		}
	}
	if ((kw = json_get(schema, "items")) != NULL)
	{
		if (kw->type != jbvBinary || !JsonContainerIsObject(kw->val.binary.data))
			schema_error("\"items\" must be a schema object");
		schema_check(kw->val.binary.data);
	}
}

/*
 * Validate `v` at `path` against schema object `schema`.  Returns NULL when
 * valid, else a palloc'd reason.  Raises 22023 for an invalid schema.
 */
static char *
schema_validate(JsonbContainer *schema, JsonbValue *v, const char *path)
{
	JsonbValue *kw;

	if (schema == NULL || !JsonContainerIsObject(schema))
		schema_error("a schema must be an object");

	if ((kw = json_get(schema, "type")) != NULL)
	{
		bool		ok = schema_validate_type_only(kw, v);

		if (!ok)
			return psprintf("%s: expected type %s, got %s", path,
							kw->type == jbvString ? pnstrdup(kw->val.string.val, kw->val.string.len) : "(one of the listed types)",
							jbv_type_name(v));
	}

	if ((kw = json_get(schema, "enum")) != NULL)
	{
		bool		found = false;

		if (kw->type != jbvBinary || !JsonContainerIsArray(kw->val.binary.data))
			schema_error("\"enum\" must be an array");
		for (int i = 0; i < JsonContainerSize(kw->val.binary.data) && !found; i++)
		{
			JsonbValue *e = getIthJsonbValueFromContainer(kw->val.binary.data, i);

			if (e->type != v->type)
				continue;
			if (e->type == jbvBinary)
			{
				Jsonb	   *a = JsonbValueToJsonb(e);
				Jsonb	   *b = JsonbValueToJsonb(v);

				found = compareJsonbContainers(&a->root, &b->root) == 0;
			}
			else if (e->type == jbvString)
				found = e->val.string.len == v->val.string.len &&
					memcmp(e->val.string.val, v->val.string.val, e->val.string.len) == 0;
			else if (e->type == jbvNumeric)
				found = DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(e->val.numeric),
														 NumericGetDatum(v->val.numeric)));
			else if (e->type == jbvBool)
				found = e->val.boolean == v->val.boolean;
			else
				found = true;	/* null */
		}
		if (!found)
			return psprintf("%s: value is not one of the enum", path);
	}

	if (v->type == jbvNumeric)
	{
		if ((kw = json_get(schema, "minimum")) != NULL)
		{
			if (kw->type != jbvNumeric)
				schema_error("\"minimum\" must be a number");
			if (numeric_compare(v->val.numeric, kw->val.numeric) < 0)
				return psprintf("%s: %s is less than the minimum", path,
								number_text(v->val.numeric));
		}
		if ((kw = json_get(schema, "maximum")) != NULL)
		{
			if (kw->type != jbvNumeric)
				schema_error("\"maximum\" must be a number");
			if (numeric_compare(v->val.numeric, kw->val.numeric) > 0)
				return psprintf("%s: %s is more than the maximum", path,
								number_text(v->val.numeric));
		}
	}
	if (v->type == jbvString)
	{
		Numeric		n = int64_to_numeric(pg_mbstrlen_with_len(v->val.string.val,
															  v->val.string.len));

		if ((kw = json_get(schema, "minLength")) != NULL)
		{
			if (kw->type != jbvNumeric)
				schema_error("\"minLength\" must be a number");
			if (numeric_compare(n, kw->val.numeric) < 0)
				return psprintf("%s: string shorter than minLength", path);
		}
		if ((kw = json_get(schema, "maxLength")) != NULL)
		{
			if (kw->type != jbvNumeric)
				schema_error("\"maxLength\" must be a number");
			if (numeric_compare(n, kw->val.numeric) > 0)
				return psprintf("%s: string longer than maxLength", path);
		}
	}
	if (v->type == jbvBinary && JsonContainerIsObject(v->val.binary.data))
	{
		JsonbContainer *obj = v->val.binary.data;

		if ((kw = json_get(schema, "required")) != NULL)
		{
			if (kw->type != jbvBinary || !JsonContainerIsArray(kw->val.binary.data))
				schema_error("\"required\" must be an array of strings");
			for (int i = 0; i < JsonContainerSize(kw->val.binary.data); i++)
			{
				JsonbValue *k = getIthJsonbValueFromContainer(kw->val.binary.data, i);

				if (k->type != jbvString)
					schema_error("\"required\" must be an array of strings");
				if (getKeyJsonValueFromContainer(obj, k->val.string.val, k->val.string.len, NULL) == NULL)
					return psprintf("%s: missing required property \"%.*s\"", path,
									k->val.string.len, k->val.string.val);
			}
		}
		if ((kw = json_get(schema, "properties")) != NULL)
		{
			JsonbIterator *it;
			JsonbValue	key;
			JsonbIteratorToken tok;

			if (kw->type != jbvBinary || !JsonContainerIsObject(kw->val.binary.data))
				schema_error("\"properties\" must be an object");
			it = JsonbIteratorInit(kw->val.binary.data);
			while ((tok = JsonbIteratorNext(&it, &key, true)) != WJB_DONE)
			{
				JsonbValue	sub;
				JsonbValue *prop;

				if (tok != WJB_KEY)
					continue;
				tok = JsonbIteratorNext(&it, &sub, true);
				prop = getKeyJsonValueFromContainer(obj, key.val.string.val, key.val.string.len, NULL);
				if (prop != NULL)
				{
					char	   *r;

					if (sub.type != jbvBinary)
						schema_error("each property's schema must be an object");
					r = schema_validate(sub.val.binary.data, prop,
										psprintf("%s.%.*s", path, key.val.string.len, key.val.string.val));
					if (r)
						return r;
				}
			}
		}
	}
	if (v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data) &&
		(kw = json_get(schema, "items")) != NULL)
	{
		if (kw->type != jbvBinary || !JsonContainerIsObject(kw->val.binary.data))
			schema_error("\"items\" must be a schema object");
		for (int i = 0; i < JsonContainerSize(v->val.binary.data); i++)
		{
			char	   *r = schema_validate(kw->val.binary.data,
											getIthJsonbValueFromContainer(v->val.binary.data, i),
											psprintf("%s[%d]", path, i));

			if (r)
				return r;
		}
	}
	return NULL;
}

/* ---- the checks ---- */

/*
 * Run check `name` (without a not_ prefix) with parameter `param` (NULL:
 * none) and `extra` (the assertion object, for secondary keys); fills
 * score, passed and reason.  Returns false for an unknown check.
 */
static bool
run_check(const char *name, JsonbValue *param, JsonbContainer *extra,
		  EvalInput *in, Metric *m)
{
	m->score = 1;
	m->passed = true;
	m->reason = NULL;

	if (strcmp(name, "non_empty") == 0)
	{
		bool		empty = true;

		for (int i = 0; i < in->len && empty; i++)
			empty = isspace((unsigned char) in->s[i]);
		if (empty)
		{
			m->score = 0;
			m->passed = false;
			m->reason = "Response is empty";
		}
	}
	else if (strcmp(name, "required_terms") == 0 || strcmp(name, "contains_all") == 0)
	{
		List	   *terms = param_strings(name, param);
		List	   *missing = NIL;
		ListCell   *lc;
		bool		ci = strcmp(name, "required_terms") == 0;

		foreach(lc, terms)
		{
			char	   *t = lfirst(lc);

			if (!(ci ? contains_ci(in, t) : contains_bytes(in->s, in->len, t, strlen(t))))
				missing = lappend(missing, t);
		}
		if (missing)
		{
			m->score = terms ? 1.0 - (double) list_length(missing) / list_length(terms) : 1;
			m->passed = false;
			m->reason = psprintf("Missing terms: %s", join_terms(missing));
		}
	}
	else if (strcmp(name, "max_length") == 0 || strcmp(name, "min_length") == 0)
	{
		double		limit = param_number(name, param);
		int			n = input_chars(in);

		if (limit < 0)
			check_error(name, "a number of characters, not negative");
		if (name[1] == 'a' && n > limit)
		{
			m->score = n > 0 ? limit / n : 0;
			m->passed = false;
			m->reason = psprintf("Length %d exceeds max %g", n, limit);
		}
		else if (name[1] == 'i' && n < limit)
		{
			m->score = limit > 0 ? n / limit : 1;
			m->passed = false;
			m->reason = psprintf("Length %d is below min %g", n, limit);
		}
	}
	else if (strcmp(name, "max_words") == 0)
	{
		double		limit = param_number(name, param);
		int			words = 0;
		bool		inword = false;

		for (int i = 0; i < in->len; i++)
		{
			bool		sp = isspace((unsigned char) in->s[i]);

			if (!sp && !inword)
				words++;
			inword = !sp;
		}
		if (words > limit)
		{
			m->score = words > 0 ? limit / words : 0;
			m->passed = false;
			m->reason = psprintf("%d words exceed max %g", words, limit);
		}
	}
	else if (strcmp(name, "contains") == 0 || strcmp(name, "icontains") == 0)
	{
		char	   *t = param_string(name, param);
		bool		found = name[0] == 'i' ? contains_ci(in, t) :
			contains_bytes(in->s, in->len, t, strlen(t));

		if (!found)
		{
			m->score = 0;
			m->passed = false;
			m->reason = psprintf("Missing \"%s\"", t);
		}
	}
	else if (strcmp(name, "contains_any") == 0)
	{
		List	   *terms = param_strings(name, param);
		ListCell   *lc;
		bool		found = false;

		foreach(lc, terms)
			found |= contains_bytes(in->s, in->len, lfirst(lc), strlen(lfirst(lc)));
		if (!found)
		{
			m->score = 0;
			m->passed = false;
			m->reason = psprintf("None of: %s", join_terms(terms));
		}
	}
	else if (strcmp(name, "not_contains") == 0)
	{
		List	   *terms = param_strings(name, param);
		List	   *present = NIL;
		ListCell   *lc;

		foreach(lc, terms)
			if (contains_ci(in, lfirst(lc)))
				present = lappend(present, lfirst(lc));
		if (present)
		{
			m->score = 1.0 - (double) list_length(present) / list_length(terms);
			m->passed = false;
			m->reason = psprintf("Forbidden terms: %s", join_terms(present));
		}
	}
	else if (strcmp(name, "starts_with") == 0 || strcmp(name, "equals") == 0)
	{
		char	   *t = param_string(name, param);
		int			tl = strlen(t);
		bool		ok = name[0] == 's' ? (tl <= in->len && memcmp(in->s, t, tl) == 0) :
			(tl == in->len && memcmp(in->s, t, tl) == 0);

		if (!ok)
		{
			m->score = 0;
			m->passed = false;
			m->reason = name[0] == 's' ? psprintf("Does not start with \"%s\"", t) :
				pstrdup("Not equal to the expected text");
		}
	}
	else if (strcmp(name, "regex") == 0 && in->validate_only)
		(void) RE_compile_and_cache(cstring_to_text(param_string(name, param)),
									REG_ADVANCED, DEFAULT_COLLATION_OID);
	else if (strcmp(name, "regex") == 0)
	{
		char	   *pattern = param_string(name, param);

		if (!RE_compile_and_execute(cstring_to_text(pattern), (char *) in->s, in->len,
									REG_ADVANCED, DEFAULT_COLLATION_OID, 0, NULL))
		{
			m->score = 0;
			m->passed = false;
			m->reason = psprintf("Does not match /%s/", pattern);
		}
	}
	else if (strcmp(name, "is_json") == 0)
	{
		if (!is_valid_json(in->s, in->len))
		{
			m->score = 0;
			m->passed = false;
			m->reason = "Not valid JSON";
		}
	}
	else if (strcmp(name, "json_schema") == 0)
	{
		char	   *why = NULL;

		if (param == NULL || param->type != jbvBinary || !JsonContainerIsObject(param->val.binary.data))
			schema_error("the schema must be a JSON object");
		schema_check(param->val.binary.data);
		if (!is_valid_json(in->s, in->len))
			why = "Not valid JSON";
		else
		{
			Jsonb	   *doc = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
																 CStringGetDatum(pnstrdup(in->s, in->len))));
			JsonbValue	root;

			if (JB_ROOT_IS_SCALAR(doc))
			{
				JsonbValue *v = getIthJsonbValueFromContainer(&doc->root, 0);

				root = *v;
			}
			else
			{
				root.type = jbvBinary;
				root.val.binary.data = &doc->root;
				root.val.binary.len = VARSIZE(doc) - VARHDRSZ;
			}
			why = schema_validate(param->val.binary.data, &root, "$");
		}
		if (why)
		{
			m->score = 0;
			m->passed = false;
			m->reason = why;
		}
	}
	else if (strcmp(name, "levenshtein") == 0)
	{
		char	   *expected;
		double		max;
		int			dist;
		JsonbValue *mv;

		if (param != NULL && param->type == jbvBinary && JsonContainerIsObject(param->val.binary.data))
		{
			expected = param_string(name, json_get(param->val.binary.data, "expected"));
			mv = json_get(param->val.binary.data, "max");
		}
		else
		{
			expected = param_string(name, param);
			mv = extra ? json_get(extra, "max") : NULL;
		}
		max = mv ? param_number(name, mv) : 0;
		if (max < 0)
			check_error(name, "a maximum distance that is not negative");
		/*
		 * Exact for ordinary sizes; for huge ones bounded (about (max + 1)
		 * cells per character), so that no output can make it run for
		 * minutes: then a failing distance reads as max + 1.
		 */
		if ((double) in->len * strlen(expected) <= 4e6)
			dist = varstr_levenshtein(in->s, in->len, expected, strlen(expected), 1, 1, 1, true);
		else
			dist = varstr_levenshtein_less_equal(in->s, in->len, expected, strlen(expected),
												 1, 1, 1, (int) Min(max + 1, INT_MAX - 1), true);
		if (dist > max)
		{
			m->score = max / dist;
			m->passed = false;
			m->reason = psprintf("Edit distance %d exceeds %g", dist, max);
		}
	}
	else if (strcmp(name, "cost_max") == 0 || strcmp(name, "latency_max") == 0)
	{
		bool		cost = name[0] == 'c';
		double		limit = param_number(name, param);
		double		actual;

		if (in->validate_only)
			return true;
		if (!context_number(in, cost ? "cost_usd" : "latency_ms", &actual))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("check \"%s\" needs context.%s", name, cost ? "cost_usd" : "latency_ms"),
					 errhint("Evaluate a generation, or pass context => '{\"%s\": ...}'.",
							 cost ? "cost_usd" : "latency_ms")));
		if (actual > limit)
		{
			m->score = actual > 0 ? limit / actual : 0;
			m->passed = false;
			m->reason = cost ? psprintf("Cost %g USD exceeds max %g", actual, limit) :
				psprintf("Latency %g ms exceeds max %g", actual, limit);
		}
	}
	else if (strcmp(name, "llm_rubric") == 0 && in->validate_only)
	{
		bool		ok = (param != NULL && param->type == jbvString) ||
			(param != NULL && param->type == jbvBinary &&
			 JsonContainerIsObject(param->val.binary.data) &&
			 json_get_string(param->val.binary.data, "rubric") != NULL);

		if (!ok)
			check_error(name, "a rubric: a string, or {\"rubric\": \"...\", \"model\": \"...\"}");
	}
	else if (strcmp(name, "llm_rubric") == 0)
	{
		if (in->grader == NULL)
			elog(ERROR, "llm_rubric check evaluated without a grader");
		in->grader(in->grader_arg, param, extra, in->s, in->len,
				   &m->score, &m->passed, &m->reason);
	}
	else
		return citecheck_run(name, param, in->context, in->s, in->len, in->validate_only,
							 &m->score, &m->passed, &m->reason);
	return true;
}

/* A check's weight: a double (the score never overflows); raises 22023 */
static double
param_weight(const char *check, JsonbValue *w)
{
	double		d = w->type == jbvNumeric ? json_numeric_double(w->val.numeric) : -1;

	if (w->type != jbvNumeric || isinf(d))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("weight of check \"%s\" must be a number from 0 to about 1.8e308", check)));
	return d;
}

/* Parse one assertion (a name, or {type, value, weight}) and run it */
static void
run_assertion(const char *name, JsonbValue *param, JsonbContainer *extra,
			  double weight, EvalInput *in, List **metrics)
{
	Metric	   *m = palloc0(sizeof(Metric));
	bool		negate = strncmp(name, "not_", 4) == 0 && strcmp(name, "not_contains") != 0;

	m->name = pstrdup(name);
	m->weight = weight;
	if (weight < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("weight of check \"%s\" must not be negative", name)));
	if (!run_check(negate ? name + 4 : name, param, extra, in, m))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown check \"%s\"", name),
				 errhint("Known checks: " KNOWN_CHECKS ".")));
	if (negate)
	{
		m->score = 1 - m->score;
		m->passed = !m->passed;
		m->reason = m->passed ? NULL : psprintf("Negated check %s passed", name + 4);
	}
	if (weight == 0)
	{
		m->passed = true;		/* informational */
		m->reason = NULL;
	}
	*metrics = lappend(*metrics, m);
}

/* A score as jsonb numeric: 4 places, at least one decimal (1.0, 0.6667) */
static Numeric
score_numeric(double d)
{
	char		buf[32];
	int			len;

	snprintf(buf, sizeof(buf), "%.4f", d);
	len = strlen(buf);
	while (len > 2 && buf[len - 1] == '0' && buf[len - 2] != '.')
		buf[--len] = '\0';
	return DatumGetNumeric(DirectFunctionCall3(numeric_in, CStringGetDatum(buf),
											   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)));
}

static void
push_key(JsonbParseState **st, const char *key)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	pushJsonbValue(st, WJB_KEY, &k);
}

static void
push_scalar(JsonbParseState **st, JsonbIteratorToken tok, JsonbValue *v)
{
	pushJsonbValue(st, tok, v);
}

/*
 * Evaluate `content` with `checks` (NULL: the articles' default) and
 * `context` (NULL: none); returns the result jsonb.  llm_rubric checks are
 * handed to `grader` (in the order they appear; evaluating the same checks
 * again asks it the same questions in the same order).
 */
static Jsonb *evaluate_internal(const char *content, int len, Jsonb *checks,
								Jsonb *context, bool validate_only,
								RubricGrader grader, void *grader_arg);

Jsonb *
maester_evaluate(const char *content, int len, Jsonb *checks, Jsonb *context,
				 RubricGrader grader, void *grader_arg)
{
	return evaluate_internal(content, len, checks, context, false, grader, grader_arg);
}

/*
 * Raise the error evaluate() would raise for these checks, without running
 * a grader or needing a context: for registration.
 */
void
maester_validate_checks(Jsonb *checks)
{
	if (checks != NULL)
		(void) evaluate_internal("", 0, checks, NULL, true, NULL, NULL);
}

static Jsonb *
evaluate_internal(const char *content, int len, Jsonb *checks, Jsonb *context,
				  bool validate_only, RubricGrader grader, void *grader_arg)
{
	EvalInput	in = {content, len, -1, NULL, 0, NULL, validate_only, grader, grader_arg};
	List	   *metrics = NIL;
	bool		has_threshold = false;
	double		threshold = 0;
	JsonbContainer *assertions = NULL;
	bool		saw_non_empty = false;
	double		wsum = 0;
	double		ssum = 0;
	double		wmax = 0;
	bool		all_passed = true;
	bool		pass;
	double		score;
	ListCell   *lc;
	JsonbParseState *st = NULL;
	JsonbValue	v;
	JsonbValue *res;
	JsonbValue *response_schema;

	if (context != NULL)
	{
		if (!JB_ROOT_IS_OBJECT(context))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("context must be a JSON object")));
		in.context = &context->root;
	}

	/* non_empty always runs, first */
	run_assertion("non_empty", NULL, NULL, 1, &in, &metrics);
	/* then a response format's schema (context.response_schema) */
	if ((response_schema = in.context ? json_get(in.context, "response_schema") : NULL))
		run_assertion("json_schema", response_schema, NULL, 1, &in, &metrics);

	if (checks == NULL)
	{
		/* the default, but for a JSON answer, which max_length does not fit */
		JsonbValue	p;

		p.type = jbvNumeric;
		p.val.numeric = int64_to_numeric(500);
		if (response_schema == NULL)
			run_assertion("max_length", &p, NULL, 1, &in, &metrics);
	}
	else if (JB_ROOT_IS_SCALAR(checks))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("checks must be a JSON object or array"),
				 errhint("For example '{\"required_terms\": [\"impact\"], \"max_length\": 500}'.")));
	else if (JB_ROOT_IS_ARRAY(checks))
		assertions = &checks->root;
	else
	{
		JsonbValue *a = json_get(&checks->root, "assert");
		JsonbValue *t = json_get(&checks->root, "threshold");

		if (t)
		{
			/* the score is between 0 and 1: beyond, a result always passes or fails */
			if (t->type == jbvNumeric)
				threshold = json_numeric_double(t->val.numeric);
			if (t->type != jbvNumeric || !(threshold >= 0 && threshold <= 1))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("threshold must be a number between 0 and 1"),
						 errdetail("The threshold is compared with the weighted score, which lies between 0 and 1.")));
			has_threshold = true;
		}
		if (a)
		{
			if (a->type != jbvBinary || !JsonContainerIsArray(a->val.binary.data))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("\"assert\" must be an array of checks")));
			assertions = a->val.binary.data;
		}
		else
		{
			/* {"check": parameter, ...} */
			JsonbIterator *it = JsonbIteratorInit(&checks->root);
			JsonbValue	key;
			JsonbIteratorToken tok;

			while ((tok = JsonbIteratorNext(&it, &key, true)) != WJB_DONE)
			{
				JsonbValue	val;
				char	   *name;

				if (tok != WJB_KEY)
					continue;
				tok = JsonbIteratorNext(&it, &val, true);
				name = pnstrdup(key.val.string.val, key.val.string.len);
				if (strcmp(name, "threshold") == 0)
					continue;
				if (strcmp(name, "non_empty") == 0)
					continue;	/* already run */
				run_assertion(name, &val, NULL, 1, &in, &metrics);
			}
		}
	}

	if (assertions != NULL)
	{
		for (int i = 0; i < JsonContainerSize(assertions); i++)
		{
			JsonbValue *e = getIthJsonbValueFromContainer(assertions, i);
			char	   *name;
			JsonbValue *param = NULL;
			double		weight = 1;
			JsonbContainer *obj = NULL;

			if (e->type == jbvString)
				name = pnstrdup(e->val.string.val, e->val.string.len);
			else if (e->type == jbvBinary && JsonContainerIsObject(e->val.binary.data))
			{
				JsonbValue *w;

				obj = e->val.binary.data;
				name = json_get_string(obj, "type");
				if (name == NULL)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("check %d has no \"type\"", i + 1),
							 errhint("Write checks as {\"type\": \"contains\", \"value\": \"...\"}.")));
				param = json_get(obj, "value");
				if ((w = json_get(obj, "weight")) != NULL)
					weight = param_weight(name, w);
			}
			else
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("check %d must be a name or an object", i + 1)));
			if (strcmp(name, "non_empty") == 0 && !saw_non_empty)
			{
				/* already run first: only its weight may change */
				((Metric *) linitial(metrics))->weight = weight;
				if (weight == 0)
				{
					((Metric *) linitial(metrics))->passed = true;
					((Metric *) linitial(metrics))->reason = NULL;
				}
				saw_non_empty = true;
				continue;
			}
			run_assertion(name, param, obj, weight, &in, &metrics);
		}
	}

	foreach(lc, metrics)
	{
		Metric	   *m = lfirst(lc);

		wsum += m->weight;
		ssum += m->score * m->weight;
		all_passed &= m->passed;
		wmax = Max(wmax, m->weight);
	}
	if (isinf(wsum))
	{
		/* weights near the largest double: the same sums, scaled down */
		wsum = ssum = 0;
		foreach(lc, metrics)
		{
			Metric	   *m = lfirst(lc);

			wsum += m->weight / wmax;
			ssum += m->score * (m->weight / wmax);
		}
	}
	score = wsum > 0 ? ssum / wsum : 1;
	score = round(score * 10000) / 10000;
	pass = has_threshold ? score >= threshold : all_passed;

	/* build {status, reliability_score, metrics} */
	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	push_key(&st, "status");
	v.type = jbvString;
	v.val.string.val = pass ? "pass" : "fail";
	v.val.string.len = 4;
	push_scalar(&st, WJB_VALUE, &v);
	push_key(&st, "reliability_score");
	v.type = jbvNumeric;
	v.val.numeric = score_numeric(score);
	push_scalar(&st, WJB_VALUE, &v);
	push_key(&st, "metrics");
	pushJsonbValue(&st, WJB_BEGIN_ARRAY, NULL);
	foreach(lc, metrics)
	{
		Metric	   *m = lfirst(lc);

		pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
		push_key(&st, "name");
		v.type = jbvString;
		v.val.string.val = m->name;
		v.val.string.len = strlen(m->name);
		push_scalar(&st, WJB_VALUE, &v);
		push_key(&st, "score");
		v.type = jbvNumeric;
		v.val.numeric = score_numeric(m->score);
		push_scalar(&st, WJB_VALUE, &v);
		push_key(&st, "passed");
		v.type = jbvBool;
		v.val.boolean = m->passed;
		push_scalar(&st, WJB_VALUE, &v);
		push_key(&st, "reason");
		if (m->reason)
		{
			v.type = jbvString;
			v.val.string.val = m->reason;
			v.val.string.len = strlen(m->reason);
		}
		else
			v.type = jbvNull;
		push_scalar(&st, WJB_VALUE, &v);
		pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	}
	pushJsonbValue(&st, WJB_END_ARRAY, NULL);
	res = pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(res);
}

PG_FUNCTION_INFO_V1(validate_checks);
/*
 * maester.validate_checks(checks jsonb) RETURNS jsonb: the checks, if
 * evaluate() would accept them (else its error); runs no grader.
 */
Datum
validate_checks(PG_FUNCTION_ARGS)
{
	Jsonb	   *checks = PG_GETARG_JSONB_P(0);

	maester_check_catalog();
	maester_validate_checks(checks);
	PG_RETURN_JSONB_P(checks);
}

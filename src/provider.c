/*-------------------------------------------------------------------------
 *
 * provider.c
 *	  What the provider adapters share: kinds, URLs, JSON access that never
 *	  throws on a bad answer, and error-body summaries that never leak a key.
 *
 * A provider's body is untrusted input.  It is parsed with jsonb_in; a
 * parse error is caught and turned into a "problem" string (jsonb_in holds
 * no resources, so catching its error without a subtransaction is safe),
 * so malformed answers become clear gateway errors, never crashes.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/elog.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"

#include "provider.h"

/* Map the provider.kind column to the enum (the column has a CHECK) */
ProviderKind
provider_kind_from_name(const char *kind)
{
	if (strcmp(kind, "openai") == 0)
		return PROVIDER_OPENAI;
	if (strcmp(kind, "anthropic") == 0)
		return PROVIDER_ANTHROPIC;
	if (strcmp(kind, "openai_compatible") == 0)
		return PROVIDER_OPENAI_COMPATIBLE;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown provider kind \"%s\"", kind),
			 errhint("Use openai, anthropic or openai_compatible.")));
	return PROVIDER_OPENAI;		/* keep compiler quiet */
}

const char *
provider_kind_name(ProviderKind kind)
{
	switch (kind)
	{
		case PROVIDER_OPENAI:
			return "openai";
		case PROVIDER_ANTHROPIC:
			return "anthropic";
		case PROVIDER_OPENAI_COMPATIBLE:
			return "openai_compatible";
	}
	return "?";
}

/* The endpoint URL: {base}/chat/completions or {base}/v1/messages */
char *
provider_url(ProviderKind kind, const char *base_url)
{
	size_t		len = strlen(base_url);

	while (len > 0 && base_url[len - 1] == '/')
		len--;
	return psprintf("%.*s%s", (int) len, base_url,
					kind == PROVIDER_ANTHROPIC ? "/v1/messages" : "/chat/completions");
}

void
provider_build_body(ProviderKind kind, const GenRequest *req, StringInfo out)
{
	if (kind == PROVIDER_ANTHROPIC)
		anthropic_build_body(req, out);
	else
		openai_build_body(kind, req, out);
}

/*
 * Parse `body` as JSON.  Returns NULL and sets *problem when it is not
 * valid JSON (or not an object).
 */
Jsonb *
provider_parse_json(const char *body, char **problem)
{
	MemoryContext cxt = CurrentMemoryContext;
	Jsonb	   *jb = NULL;

	PG_TRY();
	{
		jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(body)));
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		*problem = psprintf("the response is not valid JSON (%s)", edata->message);
		FreeErrorData(edata);
		return NULL;
	}
	PG_END_TRY();
	if (!JB_ROOT_IS_OBJECT(jb))
	{
		*problem = pstrdup("the response is not a JSON object");
		return NULL;
	}
	return jb;
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

/* An integer member; false when absent, not a number, or not integral */
bool
json_get_int64(JsonbContainer *c, const char *key, int64 *out)
{
	JsonbValue *v = json_get(c, key);
	double		d;

	if (v == NULL || v->type != jbvNumeric)
		return false;
	/* numeric_float8 does not throw for finite numerics */
	d = DatumGetFloat8(DirectFunctionCall1(numeric_float8,
										   NumericGetDatum(v->val.numeric)));
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

bool
provider_parse_response(ProviderKind kind, const char *body, GenResponse *out,
						char **problem)
{
	Jsonb	   *jb = provider_parse_json(body, problem);

	memset(out, 0, sizeof(*out));
	if (jb == NULL)
		return false;
	if (kind == PROVIDER_ANTHROPIC)
		return anthropic_parse_response(jb, out, problem);
	return openai_parse_response(jb, out, problem);
}

/* Replace every occurrence of `secret` in `s` (in place) by '*' */
static void
redact(char *s, const char *secret)
{
	size_t		slen;
	char	   *p;

	if (secret == NULL || (slen = strlen(secret)) < 4)
		return;
	while ((p = strstr(s, secret)) != NULL)
		memset(p, '*', slen);
}

/*
 * Mask the value after every "authorization:" and "x-api-key:" in `s`
 * (case-insensitive; after "Bearer " for the former), whatever key it is.
 */
static void
redact_headers(char *s)
{
	static const char *const names[] = {"authorization:", "x-api-key:"};

	for (int n = 0; n < lengthof(names); n++)
	{
		size_t		nlen = strlen(names[n]);

		for (char *p = s; *p; p++)
		{
			if (pg_strncasecmp(p, names[n], nlen) != 0)
				continue;
			p += nlen;
			while (*p == ' ' || *p == '\t')
				p++;
			if (pg_strncasecmp(p, "bearer ", 7) == 0)
				p += 7;
			while (*p && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' &&
				   *p != '"' && *p != ',')
				*p++ = '*';
			if (*p == '\0')
				break;
		}
	}
}

/*
 * A short, printable summary of a provider's error body for errdetail: the
 * error message when the body is a provider-shaped JSON error (OpenAI
 * {"error": {"message"}}, Anthropic {"error": {"type", "message"}}),
 * otherwise the body; cut to 300 characters.  Control characters become
 * blanks.  Before cutting, `secret` (the API key in use) is masked
 * wherever it appears, and so is any value after "authorization:" or
 * "x-api-key:", in case a server echoes request headers back.
 */
char *
provider_error_summary(const char *body, size_t len, const char *secret)
{
	char	   *problem = NULL;
	char	   *msg = NULL;
	StringInfoData s;

	if (body == NULL || len == 0)
		return pstrdup("(empty body)");
	if (body[0] == '{')
	{
		Jsonb	   *jb = provider_parse_json(body, &problem);

		if (jb)
		{
			JsonbContainer *err = json_get_container(&jb->root, "error");

			if (err)
			{
				char	   *type = json_get_string(err, "type");

				msg = json_get_string(err, "message");
				if (msg && type)
					msg = psprintf("%s: %s", type, msg);
			}
			else
				msg = json_get_string(&jb->root, "message");
		}
	}
	if (msg == NULL)
		msg = pnstrdup(body, len);

	/* mask keys in the whole text first, then cut it short */
	redact(msg, secret);
	redact_headers(msg);

	initStringInfo(&s);
	for (const char *p = msg; *p && s.len < 300; p++)
		appendStringInfoChar(&s, ((unsigned char) *p < ' ') ? ' ' : *p);
	if (strlen(msg) > 300)
		appendStringInfoString(&s, "...");
	/* a body in another encoding, or cut inside a character: keep ASCII */
	if (!pg_verifymbstr(s.data, s.len, true))
		for (char *p = s.data; *p; p++)
			if ((unsigned char) *p >= 0x80)
				*p = '?';
	return s.data;
}

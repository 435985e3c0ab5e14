/*-------------------------------------------------------------------------
 *
 * provider_openai.c
 *	  The OpenAI Chat Completions adapter (kinds openai and
 *	  openai_compatible): POST {base_url}/chat/completions.
 *
 * Request (openai's ChatCompletionCreateParamsNonStreaming): {"model",
 * "messages" (system, user, assistant with tool_calls, tool with
 * tool_call_id), "max_completion_tokens" (openai) or "max_tokens"
 * (compatible servers such as Ollama, vLLM and llama.cpp, which do not all
 * know the newer name), "temperature", "top_p", "stop", "tools" (function
 * tools), "tool_choice", "response_format": {"type": "json_object"} or
 * {"type": "json_schema", "json_schema": {...}}}.
 *
 * Response: choices[0].message.content, .refusal (kept apart), .tool_calls
 * (normalized to {id, name, arguments}), finish_reason, model, id,
 * usage.{prompt_tokens, completion_tokens, prompt_tokens_details.
 * {cached_tokens, cache_write_tokens}, completion_tokens_details.
 * reasoning_tokens}, service_tier.  prompt_tokens already include the
 * cached tokens, which is our normalized convention.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <errno.h>
#include <math.h>

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "utils/json.h"

#include "jsonutil.h"
#include "message.h"
#include "provider.h"

/* Said when JSON mode is asked for and no message mentions JSON */
#define JSON_MODE_INSTRUCTION "Answer in JSON."

/* Append "key": "value" with JSON escaping (value NUL-terminated) */
static void
append_string_member(StringInfo out, const char *key, const char *value)
{
	escape_json(out, key);
	appendStringInfoChar(out, ':');
	escape_json(out, value);
}

/* Append a JSON array of strings */
static void
append_string_array(StringInfo out, List *strings)
{
	ListCell   *lc;

	appendStringInfoChar(out, '[');
	foreach(lc, strings)
	{
		if (lc != list_head(strings))
			appendStringInfoChar(out, ',');
		escape_json(out, (const char *) lfirst(lc));
	}
	appendStringInfoChar(out, ']');
}

/*
 * "arguments": a string of JSON (ChatCompletionMessageFunctionToolCall):
 * the arguments' JSON text, or, for arguments the model wrote that were
 * not JSON (kept as a JSON string), that text as it was
 */
static void
append_arguments(StringInfo out, const char *json)
{
	if (json[0] == '"')
	{
		char	   *problem = NULL;
		Jsonb	   *s = json_parse_any(json, &problem);
		JsonbValue	v;

		if (s && JsonbExtractScalar(&s->root, &v) && v.type == jbvString)
		{
			appendStringInfoString(out, "\"arguments\":");
			escape_json(out, pnstrdup(v.val.string.val, v.val.string.len));
			return;
		}
	}
	append_string_member(out, "arguments", json);
}

/*
 * The conversation as ChatCompletionMessageParam[]: system, user,
 * assistant (tool_calls as ChatCompletionMessageFunctionToolCall, whose
 * arguments are a string of JSON) and tool ({tool_call_id, content}).
 */
static void
append_messages(StringInfo out, const GenRequest *req)
{
	ListCell   *lc;

	appendStringInfoString(out, ",\"messages\":[");
	/* JSON mode is refused (400) unless a message says "json": say it */
	if (req->json_format && !messages_mention_json(req))
	{
		appendStringInfoString(out, "{\"role\":\"system\",");
		append_string_member(out, "content", JSON_MODE_INSTRUCTION);
		appendStringInfoString(out, "},");
	}
	foreach(lc, req->messages)
	{
		GenMessage *m = (GenMessage *) lfirst(lc);

		if (lc != list_head(req->messages))
			appendStringInfoChar(out, ',');
		appendStringInfoString(out, "{\"role\":");
		escape_json(out, m->role);
		appendStringInfoString(out, ",\"content\":");
		/* an assistant's turn that only calls tools: content null, as the API answers it */
		if (m->content && !(m->content[0] == '\0' && m->tool_calls))
			escape_json(out, m->content);
		else
			appendStringInfoString(out, "null");
		if (m->tool_calls)
		{
			ListCell   *tl;

			appendStringInfoString(out, ",\"tool_calls\":[");
			foreach(tl, m->tool_calls)
			{
				GenToolCall *tc = (GenToolCall *) lfirst(tl);

				if (tl != list_head(m->tool_calls))
					appendStringInfoChar(out, ',');
				appendStringInfoChar(out, '{');
				append_string_member(out, "id", tc->id);
				appendStringInfoString(out, ",\"type\":\"function\",\"function\":{");
				append_string_member(out, "name", tc->name);
				appendStringInfoChar(out, ',');
				append_arguments(out, tc->arguments);
				appendStringInfoString(out, "}}");
			}
			appendStringInfoChar(out, ']');
		}
		if (m->tool_call_id)
		{
			appendStringInfoChar(out, ',');
			append_string_member(out, "tool_call_id", m->tool_call_id);
		}
		appendStringInfoChar(out, '}');
	}
	appendStringInfoChar(out, ']');
}

/* tools as ChatCompletionFunctionTool[], and tool_choice */
static void
append_tools(StringInfo out, const GenRequest *req)
{
	ListCell   *lc;

	if (req->tools == NIL)
		return;
	appendStringInfoString(out, ",\"tools\":[");
	foreach(lc, req->tools)
	{
		GenTool    *t = (GenTool *) lfirst(lc);

		if (lc != list_head(req->tools))
			appendStringInfoChar(out, ',');
		appendStringInfoString(out, "{\"type\":\"function\",\"function\":{");
		append_string_member(out, "name", t->name);
		if (t->description)
		{
			appendStringInfoChar(out, ',');
			append_string_member(out, "description", t->description);
		}
		if (t->strict >= 0)
			appendStringInfo(out, ",\"strict\":%s", t->strict ? "true" : "false");
		appendStringInfo(out, ",\"parameters\":%s}}", t->parameters);
	}
	appendStringInfoChar(out, ']');
	switch (req->tool_choice)
	{
		case TOOL_CHOICE_DEFAULT:
			break;
		case TOOL_CHOICE_AUTO:
			appendStringInfoString(out, ",\"tool_choice\":\"auto\"");
			break;
		case TOOL_CHOICE_NONE:
			appendStringInfoString(out, ",\"tool_choice\":\"none\"");
			break;
		case TOOL_CHOICE_REQUIRED:
			appendStringInfoString(out, ",\"tool_choice\":\"required\"");
			break;
		case TOOL_CHOICE_NAMED:
			appendStringInfoString(out, ",\"tool_choice\":{\"type\":\"function\",\"function\":{");
			append_string_member(out, "name", req->tool_choice_name);
			appendStringInfoString(out, "}}");
			break;
	}
}

/*
 * The request body.  `max_name` is the name of the output limit:
 * max_completion_tokens at OpenAI, max_tokens at compatible servers (not
 * all of which know the newer name).
 */
static void
build_body(const GenRequest *req, StringInfo out, const char *max_name)
{
	appendStringInfoChar(out, '{');
	append_string_member(out, "model", req->model);
	append_messages(out, req);
	if (req->max_tokens > 0)
		appendStringInfo(out, ",\"%s\":%d",
						 req->max_tokens_name ? req->max_tokens_name : max_name, req->max_tokens);
	if (req->has_temperature)
		json_append_number_member(out, "temperature", req->temperature);
	if (req->has_top_p)
		json_append_number_member(out, "top_p", req->top_p);
	if (req->stop != NIL)
	{
		appendStringInfoString(out, ",\"stop\":");
		append_string_array(out, req->stop);
	}
	append_tools(out, req);
	if (req->schema_spec)
		appendStringInfo(out, ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":%s}",
						 req->schema_spec);
	else if (req->json_format)
		appendStringInfoString(out, ",\"response_format\":{\"type\":\"json_object\"}");
	json_append_members(out, req->extra);
	appendStringInfoString(out, ",\"stream\":false}");
}

static void
openai_build_body(const GenRequest *req, StringInfo out)
{
	build_body(req, out, "max_completion_tokens");
}

static void
compatible_build_body(const GenRequest *req, StringInfo out)
{
	build_body(req, out, "max_tokens");
}

/* Authorization: Bearer, when there is a key */
static struct curl_slist *
openai_headers(struct curl_slist *list, const char *key, const char *api_version)
{
	char		line[1024];

	if (key == NULL)
		return list;
	snprintf(line, sizeof(line), "Authorization: Bearer %s", key);
	list = curl_slist_append(list, line);
	explicit_bzero(line, sizeof(line));
	return list;
}

/*
 * The text of a message's content: a string, or an array of content parts
 * whose "text" members are concatenated; NULL when null or absent.
 */
static char *
message_text(JsonbContainer *message)
{
	JsonbValue *v = json_get(message, "content");

	if (v == NULL || v->type == jbvNull)
		return NULL;
	if (v->type == jbvString)
		return pnstrdup(v->val.string.val, v->val.string.len);
	if (v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data))
	{
		JsonbContainer *parts = v->val.binary.data;
		StringInfoData text;
		int			n = JsonContainerSize(parts);

		initStringInfo(&text);
		for (int i = 0; i < n; i++)
		{
			JsonbValue *part = getIthJsonbValueFromContainer(parts, i);
			char	   *t;

			if (part == NULL || part->type != jbvBinary)
				continue;
			t = json_get_string(part->val.binary.data, "text");
			if (t)
				appendStringInfoString(&text, t);
		}
		return text.data;
	}
	return NULL;
}

/*
 * The message's tool_calls (ChatCompletionMessageToolCall[]) normalized:
 * function calls' arguments, a string of JSON, parsed (kept as a JSON
 * string when the model wrote something that is not JSON: the SDK's own
 * comment warns it may); custom tools' input kept as a string.
 */
static List *
tool_calls_of(JsonbContainer *calls)
{
	List	   *out = NIL;
	int			n;

	if (calls == NULL || !JsonContainerIsArray(calls))
		return NIL;
	n = JsonContainerSize(calls);
	for (int i = 0; i < n; i++)
	{
		JsonbValue *e = getIthJsonbValueFromContainer(calls, i);
		JsonbContainer *fn;
		GenToolCall *tc;
		char	   *args;
		Jsonb	   *parsed;
		char	   *problem = NULL;

		if (e == NULL || e->type != jbvBinary || !JsonContainerIsObject(e->val.binary.data))
			continue;
		tc = palloc0(sizeof(GenToolCall));
		tc->id = json_get_string(e->val.binary.data, "id");
		fn = json_get_container(e->val.binary.data, "function");
		if (fn == NULL)
			fn = json_get_container(e->val.binary.data, "custom");
		tc->name = fn ? json_get_string(fn, "name") : NULL;
		args = fn ? json_get_string(fn, "arguments") : NULL;
		if (args == NULL && fn)
			args = json_get_string(fn, "input");
		if (args == NULL)
			tc->arguments = pstrdup("{}");
		else if ((parsed = json_parse_any(args, &problem)) != NULL)
			tc->arguments = JsonbToCString(NULL, &parsed->root, VARSIZE(parsed));
		else
		{
			StringInfoData q;

			initStringInfo(&q);
			escape_json(&q, args);
			tc->arguments = q.data;
		}
		out = lappend(out, tc);
	}
	return out;
}

/*
 * Normalize a Chat Completions answer (openai's ChatCompletion type); false
 * with *problem if unusable.  Usage is read first, so that a billed answer
 * whose content cannot be used is still charged (provider_outcome).  A
 * message's content may be null: with tool_calls, or a finish_reason of
 * length, content_filter or tool_calls, the answer is an empty text; a
 * refusal (message.refusal) is kept apart, with an empty content and
 * finish_reason "refusal".
 */
static bool
openai_parse_response(Jsonb *jb, const GenRequest *req, GenResponse *out,
					  char **problem)
{
	JsonbContainer *choices = json_get_container(&jb->root, "choices");
	JsonbValue *first;
	JsonbContainer *message;
	JsonbContainer *usage;
	List	   *calls;
	char	   *refusal;

	out->served_model = json_get_string(&jb->root, "model");
	out->response_id = json_get_string(&jb->root, "id");
	usage = json_get_container(&jb->root, "usage");
	if (usage &&
		json_get_int64(usage, "prompt_tokens", &out->input_tokens) &&
		json_get_int64(usage, "completion_tokens", &out->output_tokens))
	{
		JsonbContainer *details = json_get_container(usage, "prompt_tokens_details");
		JsonbContainer *odetails = json_get_container(usage, "completion_tokens_details");

		out->usage_present = true;
		if (details == NULL ||
			!json_get_int64(details, "cached_tokens", &out->cached_input_tokens))
			out->cached_input_tokens = 0;
		/* cache writes (CompletionUsage 6.x), like reads part of prompt_tokens */
		if (details == NULL ||
			!json_get_int64(details, "cache_write_tokens", &out->cache_write_tokens))
			out->cache_write_tokens = 0;
		if (odetails == NULL ||
			!json_get_int64(odetails, "reasoning_tokens", &out->reasoning_tokens))
			out->reasoning_tokens = 0;
	}
	out->service_tier = json_get_string(&jb->root, "service_tier");

	if (choices == NULL || !JsonContainerIsArray(choices) ||
		(first = getIthJsonbValueFromContainer(choices, 0)) == NULL ||
		first->type != jbvBinary)
	{
		*problem = pstrdup("the response has no \"choices\"");
		return false;
	}
	message = json_get_container(first->val.binary.data, "message");
	if (message == NULL)
	{
		*problem = pstrdup("the response has no \"choices[0].message\"");
		return false;
	}
	out->finish_reason = json_get_string(first->val.binary.data, "finish_reason");
	out->content = message_text(message);
	refusal = json_get_string(message, "refusal");
	if (refusal != NULL)
	{
		out->refusal = refusal;
		out->raw_finish_reason = out->finish_reason;
		out->finish_reason = pstrdup("refusal");
		if (out->content == NULL)
			out->content = pstrdup("");
	}
	calls = tool_calls_of(json_get_container(message, "tool_calls"));
	out->tool_calls = message_tool_calls_json(calls);
	if (out->content == NULL &&
		(calls != NIL ||
		 (out->finish_reason &&
		  (strcmp(out->finish_reason, "length") == 0 ||
		   strcmp(out->finish_reason, "content_filter") == 0 ||
		   strcmp(out->finish_reason, "tool_calls") == 0 ||
		   strcmp(out->finish_reason, "function_call") == 0))))
		out->content = pstrdup("");
	if (out->content == NULL)
	{
		*problem = pstrdup("the response has no \"choices[0].message.content\"");
		return false;
	}
	return true;
}


/*
 * An embeddings request (openai's EmbeddingCreateParams): {"model",
 * "input": [texts], "encoding_format": "float" (the SDK asks for base64 and
 * decodes it; floats need no decoding here), "dimensions"}; compatible
 * servers also get "input_type" when the call gives one (servers that
 * know it -- query or document -- use it; OpenAI has no such member).
 */
static void
build_embed_body(const GenRequest *req, StringInfo out, bool input_type)
{
	appendStringInfoChar(out, '{');
	append_string_member(out, "model", req->model);
	appendStringInfoString(out, ",\"input\":");
	append_string_array(out, req->inputs);
	appendStringInfoString(out, ",\"encoding_format\":\"float\"");
	if (req->dimensions > 0)
		appendStringInfo(out, ",\"dimensions\":%d", req->dimensions);
	if (input_type && req->input_type)
	{
		appendStringInfoChar(out, ',');
		append_string_member(out, "input_type", req->input_type);
	}
	json_append_members(out, req->extra);
	appendStringInfoChar(out, '}');
}

static void
openai_build_embed_body(const GenRequest *req, StringInfo out)
{
	build_embed_body(req, out, false);
}

static void
compatible_build_embed_body(const GenRequest *req, StringInfo out)
{
	build_embed_body(req, out, true);
}

/*
 * An embeddings answer (CreateEmbeddingResponse): data[] of {index,
 * embedding: number[]}, put in input order by index; usage.prompt_tokens;
 * model.  It holds a number per dimension per input -- a million and more
 * -- so it is read with PostgreSQL's JSON parser and callbacks of our own,
 * each number converted once by strtof, not built into a jsonb of numerics
 * first (test/bench/embed.sh: that was most of a request's time).
 */
typedef struct EmbedParse
{
	const GenRequest *req;
	GenResponse *out;
	int			depth;			/* of objects and arrays */
	char	   *top_field;		/* the field of the top object we are in */
	char	   *usage_field;
	char	   *item_field;		/* the field of a data[] item */
	int64		index;			/* of the current item; -1: none yet */
	float4	   *buf;			/* its embedding, as read */
	int			nbuf;
	int			maxbuf;
	bool		has_embedding;
	char	   *problem;		/* the first thing wrong */
} EmbedParse;

static void
ep_problem(EmbedParse *ep, char *what)
{
	if (ep->problem == NULL)
		ep->problem = what;
}

/* Is the parse inside the top object's "data"? */
static bool
in_data(EmbedParse *ep)
{
	return ep->top_field && strcmp(ep->top_field, "data") == 0;
}

static void
ep_object_start(void *state)
{
	EmbedParse *ep = (EmbedParse *) state;

	ep->depth++;
	/* data is an array of objects, an embedding an array of numbers */
	if ((ep->depth == 2 && in_data(ep)) || (ep->depth >= 5 && in_data(ep)) ||
		(ep->depth == 4 && in_data(ep) && ep->item_field && strcmp(ep->item_field, "embedding") == 0))
		ep_problem(ep, pstrdup("the response's data is not an array of embeddings"));
	if (ep->depth == 3 && ep->top_field && strcmp(ep->top_field, "data") == 0)
	{
		ep->index = -1;
		ep->nbuf = 0;
		ep->has_embedding = false;
	}
}

static void
ep_object_end(void *state)
{
	EmbedParse *ep = (EmbedParse *) state;
	GenResponse *out = ep->out;

	if (ep->depth == 3 && ep->top_field && strcmp(ep->top_field, "data") == 0)
	{
		/* a data[] item ends: its vector to its index */
		if (ep->index < 0 || ep->index >= out->nvectors || !ep->has_embedding)
			ep_problem(ep, pstrdup("an embedding of the response has no valid index and embedding"));
		else if (out->vectors[ep->index] != NULL)
			ep_problem(ep, psprintf("the response has embedding %d twice", (int) ep->index));
		else if (ep->nbuf == 0 || (out->dims > 0 && ep->nbuf != out->dims) ||
				 (ep->req->dimensions > 0 && ep->nbuf != ep->req->dimensions))
			ep_problem(ep, psprintf("the response has an embedding of %d dimensions where %d were %s",
									ep->nbuf, ep->req->dimensions > 0 ? ep->req->dimensions : out->dims,
									ep->req->dimensions > 0 ? "asked for" : "in the others"));
		else
		{
			out->dims = ep->nbuf;
			out->vectors[ep->index] = palloc(sizeof(float4) * ep->nbuf);
			memcpy(out->vectors[ep->index], ep->buf, sizeof(float4) * ep->nbuf);
		}
	}
	ep->depth--;
}

static void
ep_array_start(void *state)
{
	EmbedParse *ep = (EmbedParse *) state;

	ep->depth++;
	if ((ep->depth == 3 && in_data(ep)) || (ep->depth >= 5 && in_data(ep)))
		ep_problem(ep, pstrdup("the response's data is not an array of embeddings"));
	if (ep->depth == 4 && ep->item_field && strcmp(ep->item_field, "embedding") == 0)
	{
		if (ep->has_embedding)
			ep_problem(ep, pstrdup("an embedding of the response has two \"embedding\" members"));
		ep->has_embedding = true;
		ep->nbuf = 0;
	}
}

static void
ep_array_end(void *state)
{
	((EmbedParse *) state)->depth--;
}

static void
ep_field_start(void *state, char *fname, bool isnull)
{
	EmbedParse *ep = (EmbedParse *) state;

	if (ep->depth == 1)
		ep->top_field = fname;
	else if (ep->depth == 2 && ep->top_field && strcmp(ep->top_field, "usage") == 0)
		ep->usage_field = fname;
	else if (ep->depth == 3 && ep->top_field && strcmp(ep->top_field, "data") == 0)
		ep->item_field = fname;
	else
		pfree(fname);
}

static void
ep_scalar(void *state, char *token, JsonTokenType type)
{
	EmbedParse *ep = (EmbedParse *) state;
	char	   *end;

	if (ep->depth == 4 && ep->has_embedding && ep->item_field &&
		strcmp(ep->item_field, "embedding") == 0)
	{
		float		v;

		/* a value of the vector: a finite float (an underflow is its 0 or subnormal) */
		errno = 0;
		v = type == JSON_TOKEN_NUMBER ? strtof(token, &end) : 0;
		if (type != JSON_TOKEN_NUMBER || *end != '\0' || !isfinite(v))
			ep_problem(ep, pstrdup("an embedding of the response has a value that is not a finite number"));
		if (ep->nbuf == ep->maxbuf)
		{
			ep->maxbuf = Max(256, ep->maxbuf * 2);
			ep->buf = ep->buf ? repalloc(ep->buf, sizeof(float4) * ep->maxbuf) :
				palloc(sizeof(float4) * ep->maxbuf);
		}
		ep->buf[ep->nbuf++] = v;
	}
	else if (ep->depth == 3 && ep->item_field && strcmp(ep->item_field, "index") == 0 &&
			 ep->top_field && strcmp(ep->top_field, "data") == 0)
	{
		errno = 0;
		ep->index = type == JSON_TOKEN_NUMBER ? strtol(token, &end, 10) : -1;
		if (type != JSON_TOKEN_NUMBER || *end != '\0' || errno == ERANGE)
			ep->index = -1;
	}
	else if (ep->depth == 2 && ep->usage_field && strcmp(ep->usage_field, "prompt_tokens") == 0 &&
			 ep->top_field && strcmp(ep->top_field, "usage") == 0)
	{
		long long	n;

		errno = 0;
		n = type == JSON_TOKEN_NUMBER ? strtoll(token, &end, 10) : -1;
		/* a count a double can hold, as json_get_int64 takes them */
		if (type == JSON_TOKEN_NUMBER && *end == '\0' && errno != ERANGE && n >= 0 &&
			n <= (INT64CONST(1) << 53))
		{
			ep->out->input_tokens = n;
			ep->out->usage_present = true;
		}
	}
	else if (ep->depth == 1 && ep->top_field && strcmp(ep->top_field, "model") == 0 &&
			 type == JSON_TOKEN_STRING)
	{
		ep->out->served_model = token;
		return;
	}
	pfree(token);
}

static bool
openai_parse_embed_response(const char *body, const GenRequest *req, GenResponse *out,
							char **problem)
{
	EmbedParse	ep;
	JsonSemAction sem;
	JsonLexContext *lex;
	volatile JsonParseErrorType rc = JSON_SUCCESS;
	MemoryContext cxt = CurrentMemoryContext;
	char	   *volatile failed = NULL;

	memset(&ep, 0, sizeof(ep));
	ep.req = req;
	ep.out = out;
	ep.index = -1;
	out->nvectors = list_length(req->inputs);
	out->dims = 0;
	out->vectors = palloc0(sizeof(float4 *) * Max(out->nvectors, 1));
	out->output_tokens = 0;
	memset(&sem, 0, sizeof(sem));
	sem.semstate = &ep;
	sem.object_start = ep_object_start;
	sem.object_end = ep_object_end;
	sem.array_start = ep_array_start;
	sem.array_end = ep_array_end;
	sem.object_field_start = ep_field_start;
	sem.scalar = ep_scalar;
	lex = makeJsonLexContextCstringLen((char *) body, strlen(body), GetDatabaseEncoding(), true);
	/* the parser may throw (too deep a nesting): no resources are held */
	PG_TRY();
	{
		rc = pg_parse_json(lex, &sem);
		if (rc != JSON_SUCCESS)
			failed = json_errdetail(rc, lex);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		failed = pstrdup(edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	if (failed != NULL)
	{
		*problem = psprintf("the response is not valid JSON (%s)", failed);
		return false;
	}
	if (ep.problem == NULL)
		for (int i = 0; i < out->nvectors; i++)
			if (out->vectors[i] == NULL)
			{
				ep.problem = psprintf("the response has no embedding %d of %d inputs", i,
									  out->nvectors);
				break;
			}
	if (ep.problem)
	{
		*problem = ep.problem;
		return false;
	}
	out->content = pstrdup("");
	return true;
}

/* api-key, Azure OpenAI's key header, when there is a key */
static struct curl_slist *
azure_headers(struct curl_slist *list, const char *key, const char *api_version)
{
	char		line[1024];

	if (key == NULL)
		return list;
	snprintf(line, sizeof(line), "api-key: %s", key);
	list = curl_slist_append(list, line);
	explicit_bzero(line, sizeof(line));
	return list;
}

const ProviderOps openai_ops = {
	.kind = "openai",
	.path = "/chat/completions",
	.headers = openai_headers,
	.build_body = openai_build_body,
	.parse_response = openai_parse_response,
	.embed_path = "/embeddings",
	.build_embed_body = openai_build_embed_body,
	.parse_embed_response = openai_parse_embed_response,
};

/*
 * Azure OpenAI: the v1 API ({base_url}/openai/v1/chat/completions, the
 * deployment name as the model) or, with the provider's api_version, the
 * deployment URL (provider.c); OpenAI's body and answers either way.
 */
const ProviderOps azure_ops = {
	.kind = "azure",
	.path = "/openai/v1/chat/completions",
	.headers = azure_headers,
	.build_body = openai_build_body,
	.parse_response = openai_parse_response,
	.deployments = true,
	.embed_path = "/openai/v1/embeddings",
	.build_embed_body = openai_build_embed_body,
	.parse_embed_response = openai_parse_embed_response,
};

const ProviderOps openai_compatible_ops = {
	.kind = "openai_compatible",
	.path = "/chat/completions",
	.headers = openai_headers,
	.build_body = compatible_build_body,
	.parse_response = openai_parse_response,
	.embed_path = "/embeddings",
	.build_embed_body = compatible_build_embed_body,
	.parse_embed_response = openai_parse_embed_response,
};

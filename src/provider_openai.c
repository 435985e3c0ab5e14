/*-------------------------------------------------------------------------
 *
 * provider_openai.c
 *	  The OpenAI Chat Completions adapter (kinds openai and
 *	  openai_compatible): POST {base_url}/chat/completions.
 *
 * Request: {"model", "messages": [system?, user], "max_completion_tokens"
 * (openai) or "max_tokens" (compatible servers such as Ollama, vLLM and
 * llama.cpp, which do not all know the newer name), "temperature",
 * "top_p", "stop", "response_format": {"type": "json_object"}}.
 *
 * Response: choices[0].message.content (or .refusal), finish_reason,
 * model, id, usage.{prompt_tokens, completion_tokens,
 * prompt_tokens_details.cached_tokens}.  prompt_tokens already include the
 * cached tokens, which is our normalized convention.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/json.h"

#include "jsonutil.h"
#include "provider.h"

/* Append "key": "value" with JSON escaping (value NUL-terminated) */
static void
append_string_member(StringInfo out, const char *key, const char *value)
{
	escape_json(out, key);
	appendStringInfoChar(out, ':');
	escape_json(out, value);
}

/*
 * The request body.  `max_name` is the name of the output limit:
 * max_completion_tokens at OpenAI, max_tokens at compatible servers (not
 * all of which know the newer name).
 */
static void
build_body(const GenRequest *req, StringInfo out, const char *max_name)
{
	ListCell   *lc;

	appendStringInfoChar(out, '{');
	append_string_member(out, "model", req->model);
	appendStringInfoString(out, ",\"messages\":[");
	if (req->system)
	{
		appendStringInfoString(out, "{\"role\":\"system\",");
		append_string_member(out, "content", req->system);
		appendStringInfoString(out, "},");
	}
	appendStringInfoString(out, "{\"role\":\"user\",");
	append_string_member(out, "content", req->prompt);
	appendStringInfoString(out, "}]");
	if (req->max_tokens > 0)
		appendStringInfo(out, ",\"%s\":%d", max_name, req->max_tokens);
	if (req->has_temperature)
		json_append_number_member(out, "temperature", req->temperature);
	if (req->has_top_p)
		json_append_number_member(out, "top_p", req->top_p);
	if (req->stop != NIL)
	{
		appendStringInfoString(out, ",\"stop\":[");
		foreach(lc, req->stop)
		{
			if (lc != list_head(req->stop))
				appendStringInfoChar(out, ',');
			escape_json(out, (const char *) lfirst(lc));
		}
		appendStringInfoChar(out, ']');
	}
	if (req->json_format)
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
 * Normalize a Chat Completions answer (openai's ChatCompletion type); false
 * with *problem if unusable.  Usage is read first, so that a billed answer
 * whose content cannot be used is still charged (provider_outcome).  A
 * message's content may be null: with tool_calls, or a finish_reason of
 * length, content_filter or tool_calls, the answer is an empty text; a
 * refusal (message.refusal) is the text, with finish_reason "refusal".
 */
static bool
openai_parse_response(Jsonb *jb, GenResponse *out, char **problem)
{
	JsonbContainer *choices = json_get_container(&jb->root, "choices");
	JsonbValue *first;
	JsonbContainer *message;
	JsonbContainer *usage;
	JsonbContainer *tool_calls;
	char	   *refusal;

	out->served_model = json_get_string(&jb->root, "model");
	out->response_id = json_get_string(&jb->root, "id");
	usage = json_get_container(&jb->root, "usage");
	if (usage &&
		json_get_int64(usage, "prompt_tokens", &out->input_tokens) &&
		json_get_int64(usage, "completion_tokens", &out->output_tokens))
	{
		JsonbContainer *details = json_get_container(usage, "prompt_tokens_details");

		out->usage_present = true;
		if (details == NULL ||
			!json_get_int64(details, "cached_tokens", &out->cached_input_tokens))
			out->cached_input_tokens = 0;
	}

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
	if (refusal != NULL && (out->content == NULL || out->content[0] == '\0'))
	{
		out->content = refusal;
		out->raw_finish_reason = out->finish_reason;
		out->finish_reason = pstrdup("refusal");
	}
	tool_calls = json_get_container(message, "tool_calls");
	if (out->content == NULL &&
		((tool_calls && JsonContainerIsArray(tool_calls) && JsonContainerSize(tool_calls) > 0) ||
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

const ProviderOps openai_ops = {
	.kind = "openai",
	.path = "/chat/completions",
	.headers = openai_headers,
	.build_body = openai_build_body,
	.parse_response = openai_parse_response,
};

const ProviderOps openai_compatible_ops = {
	.kind = "openai_compatible",
	.path = "/chat/completions",
	.headers = openai_headers,
	.build_body = compatible_build_body,
	.parse_response = openai_parse_response,
};

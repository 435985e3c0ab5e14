/*-------------------------------------------------------------------------
 *
 * provider_anthropic.c
 *	  The Anthropic Messages adapter: POST {base_url}/v1/messages with
 *	  x-api-key and anthropic-version headers.
 *
 * Request: {"model", "max_tokens" (required by the API: 1024 when the
 * caller gives none), "system", "messages": [{"role": "user", "content"}],
 * "temperature", "top_p", "stop_sequences"}.  The API has no JSON mode;
 * a JSON response format is asked for in the system prompt.
 *
 * Response: the text blocks of "content" concatenated, stop_reason, model,
 * id, usage.{input_tokens, output_tokens, cache_read_input_tokens,
 * cache_creation_input_tokens}.  Anthropic's input_tokens exclude cache
 * reads and writes; we normalize input_tokens to include both, with the
 * reads as cached_input_tokens and the writes as cache_write_tokens.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/json.h"

#include "jsonutil.h"
#include "provider.h"

/* Default max_tokens when the caller gives none (the API requires one) */
#define ANTHROPIC_DEFAULT_MAX_TOKENS 1024

#define JSON_INSTRUCTION "Answer with a single JSON object and nothing else."

static void
anthropic_build_body(const GenRequest *req, StringInfo out)
{
	ListCell   *lc;

	appendStringInfoString(out, "{\"model\":");
	escape_json(out, req->model);
	appendStringInfo(out, ",\"max_tokens\":%d",
					 req->max_tokens > 0 ? req->max_tokens : ANTHROPIC_DEFAULT_MAX_TOKENS);
	if (req->system || req->json_format)
	{
		char	   *sys;

		if (req->system && req->json_format)
			sys = psprintf("%s\n\n%s", req->system, JSON_INSTRUCTION);
		else
			sys = req->system ? (char *) req->system : JSON_INSTRUCTION;
		appendStringInfoString(out, ",\"system\":");
		escape_json(out, sys);
	}
	appendStringInfoString(out, ",\"messages\":[{\"role\":\"user\",\"content\":");
	escape_json(out, req->prompt);
	appendStringInfoString(out, "}]");
	if (req->has_temperature)
		json_append_number_member(out, "temperature", req->temperature);
	if (req->has_top_p)
		json_append_number_member(out, "top_p", req->top_p);
	if (req->stop != NIL)
	{
		appendStringInfoString(out, ",\"stop_sequences\":[");
		foreach(lc, req->stop)
		{
			if (lc != list_head(req->stop))
				appendStringInfoChar(out, ',');
			escape_json(out, (const char *) lfirst(lc));
		}
		appendStringInfoChar(out, ']');
	}
	json_append_members(out, req->extra);
	appendStringInfoChar(out, '}');
}

/* anthropic-version, and x-api-key when there is a key */
static struct curl_slist *
anthropic_headers(struct curl_slist *list, const char *key, const char *api_version)
{
	char		line[1024];

	snprintf(line, sizeof(line), "anthropic-version: %s",
			 api_version ? api_version : "2023-06-01");
	list = curl_slist_append(list, line);
	if (key == NULL)
		return list;
	snprintf(line, sizeof(line), "x-api-key: %s", key);
	list = curl_slist_append(list, line);
	explicit_bzero(line, sizeof(line));
	return list;
}

/* Normalize a Messages answer; false with *problem if unusable */
static bool
anthropic_parse_response(Jsonb *jb, GenResponse *out, char **problem)
{
	JsonbContainer *content = json_get_container(&jb->root, "content");
	JsonbContainer *usage;
	StringInfoData text;
	int			n;

	/* usage first: a billed answer is charged even if unusable */
	out->served_model = json_get_string(&jb->root, "model");
	out->response_id = json_get_string(&jb->root, "id");
	usage = json_get_container(&jb->root, "usage");
	if (usage &&
		json_get_int64(usage, "input_tokens", &out->input_tokens) &&
		json_get_int64(usage, "output_tokens", &out->output_tokens))
	{
		int64		cache_read = 0;
		int64		cache_write = 0;

		(void) json_get_int64(usage, "cache_read_input_tokens", &cache_read);
		(void) json_get_int64(usage, "cache_creation_input_tokens", &cache_write);
		out->usage_present = true;
		out->cached_input_tokens = cache_read;
		out->cache_write_tokens = cache_write;
		out->input_tokens += cache_read + cache_write;
	}
	if (content == NULL || !JsonContainerIsArray(content))
	{
		*problem = pstrdup("the response has no \"content\"");
		return false;
	}
	/* the text blocks; tool_use, thinking and other blocks carry no text */
	initStringInfo(&text);
	n = JsonContainerSize(content);
	for (int i = 0; i < n; i++)
	{
		JsonbValue *block = getIthJsonbValueFromContainer(content, i);
		char	   *type;
		char	   *t;

		if (block == NULL || block->type != jbvBinary)
			continue;
		type = json_get_string(block->val.binary.data, "type");
		if (type == NULL || strcmp(type, "text") != 0)
			continue;
		t = json_get_string(block->val.binary.data, "text");
		if (t)
			appendStringInfoString(&text, t);
	}
	out->content = text.data;
	out->finish_reason = json_get_string(&jb->root, "stop_reason");
	return true;
}

const ProviderOps anthropic_ops = {
	.kind = "anthropic",
	.path = "/v1/messages",
	.headers = anthropic_headers,
	.build_body = anthropic_build_body,
	.parse_response = anthropic_parse_response,
	.default_max_tokens = ANTHROPIC_DEFAULT_MAX_TOKENS,
};

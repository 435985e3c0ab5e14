/*-------------------------------------------------------------------------
 *
 * provider_anthropic.c
 *	  The Anthropic Messages adapter: POST {base_url}/v1/messages with
 *	  x-api-key and anthropic-version headers.
 *
 * Request (@anthropic-ai/sdk's MessageCreateParamsNonStreaming): {"model",
 * "max_tokens" (required by the API: 1024 when the caller gives none),
 * "system" (the conversation's system messages), "messages" (user and
 * assistant turns; an assistant's tool calls as tool_use blocks, tool
 * results as tool_result blocks of a user turn), "temperature", "top_p",
 * "stop_sequences", "tools", "tool_choice", "output_config"}.  The API has
 * no JSON mode: a JSON response format is asked for in the system prompt;
 * a json_schema one is output_config.format where the model has it
 * (maester.model.native_structured_output), else a forced tool.
 *
 * Response: the text blocks of "content" concatenated, tool_use blocks as
 * tool calls, stop_reason, model,
 * id, usage.{input_tokens, output_tokens, cache_read_input_tokens,
 * cache_creation.ephemeral_1h_input_tokens, output_tokens_details.
 * thinking_tokens, service_tier,
 * cache_creation_input_tokens}.  Anthropic's input_tokens exclude cache
 * reads and writes; we normalize input_tokens to include both, with the
 * reads as cached_input_tokens and the writes as cache_write_tokens.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/json.h"

#include "jsonutil.h"
#include "message.h"
#include "provider.h"

/* Default max_tokens when the caller gives none (the API requires one) */
#define ANTHROPIC_DEFAULT_MAX_TOKENS 1024

#define JSON_INSTRUCTION "Answer with a single JSON object and nothing else."

/* The member that marks a block as a cache breakpoint (CacheControlEphemeral) */
static const char *
cache_control(const GenRequest *req)
{
	return req->cache_1h ? "\"cache_control\":{\"type\":\"ephemeral\",\"ttl\":\"1h\"}" :
		"\"cache_control\":{\"type\":\"ephemeral\"}";
}

/* A text block {"type": "text", "text": ...} */
static void
append_text_block(StringInfo out, const char *text)
{
	appendStringInfoString(out, "{\"type\":\"text\",\"text\":");
	escape_json(out, text);
	appendStringInfoChar(out, '}');
}

/*
 * One turn of the conversation as Anthropic takes it: a role (user or
 * assistant) and its content blocks.  Tool results are user turns of
 * tool_result blocks; successive messages of one role make one turn.
 */
typedef struct Turn
{
	const char *role;
	StringInfoData blocks;
	int			nblocks;
	int			last_end;		/* offset of the last block's closing brace */
	const char *only_text;		/* the turn is this one text: sent as a string */
} Turn;

static Turn *
turn_for(List **turns, const char *role)
{
	Turn	   *t = *turns ? (Turn *) llast(*turns) : NULL;

	if (t && strcmp(t->role, role) == 0)
	{
		t->only_text = NULL;
		return t;
	}
	t = palloc0(sizeof(Turn));
	t->role = role;
	initStringInfo(&t->blocks);
	*turns = lappend(*turns, t);
	return t;
}

static void
turn_block_sep(Turn *t)
{
	if (t->nblocks++ > 0)
		appendStringInfoChar(&t->blocks, ',');
}

/*
 * "system" (every system message, joined by blank lines, and the JSON
 * instruction) and "messages" (MessageParam[]).
 */
static void
append_conversation(StringInfo out, const GenRequest *req)
{
	StringInfoData sys;
	List	   *turns = NIL;
	ListCell   *lc;

	initStringInfo(&sys);
	foreach(lc, req->messages)
	{
		GenMessage *m = (GenMessage *) lfirst(lc);
		Turn	   *t;
		ListCell   *tl;

		if (strcmp(m->role, "system") == 0)
		{
			if (sys.len > 0)
				appendStringInfoString(&sys, "\n\n");
			appendStringInfoString(&sys, m->content);
			continue;
		}
		if (strcmp(m->role, "tool") == 0)
		{
			t = turn_for(&turns, "user");
			turn_block_sep(t);
			appendStringInfoString(&t->blocks, "{\"type\":\"tool_result\",\"tool_use_id\":");
			escape_json(&t->blocks, m->tool_call_id);
			appendStringInfoString(&t->blocks, ",\"content\":");
			escape_json(&t->blocks, m->content);
			appendStringInfoChar(&t->blocks, '}');
			t->last_end = t->blocks.len - 1;
			continue;
		}
		t = turn_for(&turns, m->role);
		if (m->content && (m->content[0] != '\0' || m->tool_calls == NIL))
		{
			bool		first = t->nblocks == 0;

			turn_block_sep(t);
			append_text_block(&t->blocks, m->content);
			t->last_end = t->blocks.len - 1;
			if (first && m->tool_calls == NIL)
				t->only_text = m->content;
		}
		foreach(tl, m->tool_calls)
		{
			GenToolCall *tc = (GenToolCall *) lfirst(tl);

			turn_block_sep(t);
			appendStringInfoString(&t->blocks, "{\"type\":\"tool_use\",\"id\":");
			escape_json(&t->blocks, tc->id);
			appendStringInfoString(&t->blocks, ",\"name\":");
			escape_json(&t->blocks, tc->name);
			/* input is an object (ToolUseBlockParam); what a model wrote that was not one is kept under _raw */
			if (tc->arguments[0] == '{')
				appendStringInfo(&t->blocks, ",\"input\":%s}", tc->arguments);
			else
				appendStringInfo(&t->blocks, ",\"input\":{\"_raw\":%s}}", tc->arguments);
			t->last_end = t->blocks.len - 1;
		}
	}
	if (req->json_format)
	{
		if (sys.len > 0)
			appendStringInfoString(&sys, "\n\n");
		appendStringInfoString(&sys, JSON_INSTRUCTION);
	}
	if (sys.len > 0 && req->cache_at != CACHE_NONE)
	{
		/* a cache breakpoint: the system prompt as a marked text block */
		appendStringInfoString(out, ",\"system\":[");
		append_text_block(out, sys.data);
		out->len--;
		appendStringInfo(out, ",%s}]", cache_control(req));
	}
	else if (sys.len > 0)
	{
		appendStringInfoString(out, ",\"system\":");
		escape_json(out, sys.data);
	}
	appendStringInfoString(out, ",\"messages\":[");
	foreach(lc, turns)
	{
		Turn	   *t = (Turn *) lfirst(lc);
		/* the prefix's breakpoint: the last block before the last turn */
		bool		mark = req->cache_at == CACHE_PREFIX &&
			foreach_current_index(lc) == list_length(turns) - 2;

		if (lc != list_head(turns))
			appendStringInfoChar(out, ',');
		appendStringInfoString(out, "{\"role\":");
		escape_json(out, t->role);
		appendStringInfoString(out, ",\"content\":");
		if (t->only_text && !mark)
			escape_json(out, t->only_text);
		else if (t->only_text)
		{
			appendStringInfoChar(out, '[');
			append_text_block(out, t->only_text);
			out->len--;
			appendStringInfo(out, ",%s}]", cache_control(req));
		}
		else if (mark && t->nblocks > 0)
			appendStringInfo(out, "[%.*s,%s%s]", t->last_end, t->blocks.data,
							 cache_control(req), t->blocks.data + t->last_end);
		else
			appendStringInfo(out, "[%s]", t->blocks.data);
		appendStringInfoChar(out, '}');
	}
	appendStringInfoChar(out, ']');
}

/*
 * tools (Tool[]: name, description, input_schema) and tool_choice.  A
 * json_schema response format is, where the model has no native
 * structured output, one more tool the model is made to call: its input
 * is the answer.
 */
static void
append_tools(StringInfo out, const GenRequest *req)
{
	bool		forced = req->schema != NULL && !req->native_schema;
	bool		any = false;
	ListCell   *lc;

	if (req->tools == NIL && !forced)
		return;
	appendStringInfoString(out, ",\"tools\":[");
	foreach(lc, req->tools)
	{
		GenTool    *t = (GenTool *) lfirst(lc);

		if (any)
			appendStringInfoChar(out, ',');
		any = true;
		appendStringInfoString(out, "{\"name\":");
		escape_json(out, t->name);
		if (t->description)
		{
			appendStringInfoString(out, ",\"description\":");
			escape_json(out, t->description);
		}
		if (t->strict >= 0)
			appendStringInfo(out, ",\"strict\":%s", t->strict ? "true" : "false");
		appendStringInfo(out, ",\"input_schema\":%s}", t->parameters);
	}
	if (forced)
	{
		if (any)
			appendStringInfoChar(out, ',');
		appendStringInfoString(out, "{\"name\":");
		escape_json(out, req->schema_name);
		appendStringInfo(out, ",\"description\":\"Give the answer as this tool's input.\",\"input_schema\":%s}",
						 req->schema);
		appendStringInfoString(out, "],\"tool_choice\":{\"type\":\"tool\",\"name\":");
		escape_json(out, req->schema_name);
		appendStringInfoChar(out, '}');
		return;
	}
	appendStringInfoChar(out, ']');
	switch (req->tool_choice)
	{
		case TOOL_CHOICE_DEFAULT:
			break;
		case TOOL_CHOICE_AUTO:
			appendStringInfoString(out, ",\"tool_choice\":{\"type\":\"auto\"}");
			break;
		case TOOL_CHOICE_NONE:
			appendStringInfoString(out, ",\"tool_choice\":{\"type\":\"none\"}");
			break;
		case TOOL_CHOICE_REQUIRED:
			appendStringInfoString(out, ",\"tool_choice\":{\"type\":\"any\"}");
			break;
		case TOOL_CHOICE_NAMED:
			appendStringInfoString(out, ",\"tool_choice\":{\"type\":\"tool\",\"name\":");
			escape_json(out, req->tool_choice_name);
			appendStringInfoChar(out, '}');
			break;
	}
}

static void
anthropic_build_body(const GenRequest *req, StringInfo out)
{
	ListCell   *lc;

	appendStringInfoString(out, "{\"model\":");
	escape_json(out, req->model);
	appendStringInfo(out, ",\"max_tokens\":%d",
					 req->max_tokens > 0 ? req->max_tokens : ANTHROPIC_DEFAULT_MAX_TOKENS);
	append_conversation(out, req);
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
	append_tools(out, req);
	if (req->schema != NULL && req->native_schema)
		appendStringInfo(out, ",\"output_config\":{\"format\":{\"type\":\"json_schema\",\"schema\":%s}}",
						 req->schema);
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

/*
 * Normalize a Messages answer; false with *problem if unusable.  Text
 * blocks are the content; tool_use blocks (ToolUseBlock: input is a JSON
 * object) the tool calls -- except the forced tool of a json_schema
 * response format, whose input is the answer.  A refusal (stop_reason
 * refusal) keeps whatever text came apart from the content.
 */
static bool
anthropic_parse_response(Jsonb *jb, const GenRequest *req, GenResponse *out,
						 char **problem)
{
	JsonbContainer *content = json_get_container(&jb->root, "content");
	JsonbContainer *usage;
	StringInfoData text;
	List	   *calls = NIL;
	char	   *answer = NULL;	/* the forced tool's input */
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

		JsonbContainer *creation = json_get_container(usage, "cache_creation");
		JsonbContainer *odetails = json_get_container(usage, "output_tokens_details");

		(void) json_get_int64(usage, "cache_read_input_tokens", &cache_read);
		(void) json_get_int64(usage, "cache_creation_input_tokens", &cache_write);
		out->usage_present = true;
		out->cached_input_tokens = cache_read;
		out->cache_write_tokens = cache_write;
		out->input_tokens += cache_read + cache_write;
		/* CacheCreation: the writes by lifetime (an hour's cost more) */
		if (creation == NULL ||
			!json_get_int64(creation, "ephemeral_1h_input_tokens", &out->cache_write_1h_tokens))
			out->cache_write_1h_tokens = 0;
		if (odetails == NULL ||
			!json_get_int64(odetails, "thinking_tokens", &out->reasoning_tokens))
			out->reasoning_tokens = 0;
		out->service_tier = json_get_string(usage, "service_tier");
	}
	if (content == NULL || !JsonContainerIsArray(content))
	{
		*problem = pstrdup("the response has no \"content\"");
		return false;
	}
	/* text and tool_use blocks; thinking and other blocks carry neither */
	initStringInfo(&text);
	n = JsonContainerSize(content);
	for (int i = 0; i < n; i++)
	{
		JsonbValue *block = getIthJsonbValueFromContainer(content, i);
		char	   *type;

		if (block == NULL || block->type != jbvBinary)
			continue;
		type = json_get_string(block->val.binary.data, "type");
		if (type == NULL)
			continue;
		if (strcmp(type, "text") == 0)
		{
			char	   *t = json_get_string(block->val.binary.data, "text");

			if (t)
				appendStringInfoString(&text, t);
		}
		else if (strcmp(type, "tool_use") == 0)
		{
			JsonbValue *input = json_get(block->val.binary.data, "input");
			GenToolCall *tc = palloc0(sizeof(GenToolCall));

			tc->id = json_get_string(block->val.binary.data, "id");
			tc->name = json_get_string(block->val.binary.data, "name");
			tc->arguments = input ? json_value_text(input) : pstrdup("{}");
			if (req && req->schema && !req->native_schema && answer == NULL &&
				tc->name && strcmp(tc->name, req->schema_name) == 0)
				answer = tc->arguments;
			else
				calls = lappend(calls, tc);
		}
	}
	out->content = text.data;
	out->finish_reason = json_get_string(&jb->root, "stop_reason");
	out->tool_calls = message_tool_calls_json(calls);
	if (answer != NULL)
	{
		/* the forced tool answered: that is the answer, and it stopped */
		out->content = answer;
		if (calls == NIL && out->finish_reason && strcmp(out->finish_reason, "tool_use") == 0)
		{
			out->raw_finish_reason = out->finish_reason;
			out->finish_reason = pstrdup("end_turn");
		}
	}
	if (out->finish_reason && strcmp(out->finish_reason, "refusal") == 0)
	{
		JsonbContainer *details = json_get_container(&jb->root, "stop_details");
		char	   *explanation = details ? json_get_string(details, "explanation") : NULL;

		out->refusal = out->content[0] != '\0' ? out->content :
			explanation ? explanation : pstrdup("");
		out->content = pstrdup("");
	}
	return true;
}

const ProviderOps anthropic_ops = {
	.kind = "anthropic",
	.path = "/v1/messages",
	.headers = anthropic_headers,
	.build_body = anthropic_build_body,
	.parse_response = anthropic_parse_response,
	.default_max_tokens = ANTHROPIC_DEFAULT_MAX_TOKENS,
	.max_temperature = 1.0,		/* Anthropic's range is 0 to 1 */
};

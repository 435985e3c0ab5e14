/*-------------------------------------------------------------------------
 *
 * message.c
 *	  A conversation's pieces as the provider adapters share them: tool
 *	  calls in maester's one shape, and what the messages say.
 *
 * maester.generation.tool_calls is [{"id", "name", "arguments"}] whatever
 * the provider (OpenAI's function calls, Anthropic's tool_use blocks), and
 * the same shape is what an assistant message's tool_calls take
 * (request.c), so that a tool loop appends a generation's calls as they
 * came.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/json.h"

#include "message.h"

/*
 * Tool calls (of GenToolCall *) as maester.generation.tool_calls holds
 * them: [{"id", "name", "arguments"}], arguments as a JSON value (the
 * adapters checked it is JSON, or made it a JSON string); NULL for none.
 */
char *
message_tool_calls_json(List *calls)
{
	StringInfoData s;
	ListCell   *lc;

	if (calls == NIL)
		return NULL;
	initStringInfo(&s);
	appendStringInfoChar(&s, '[');
	foreach(lc, calls)
	{
		GenToolCall *tc = (GenToolCall *) lfirst(lc);

		if (lc != list_head(calls))
			appendStringInfoChar(&s, ',');
		appendStringInfoString(&s, "{\"id\":");
		escape_json(&s, tc->id ? tc->id : "");
		appendStringInfoString(&s, ",\"name\":");
		escape_json(&s, tc->name ? tc->name : "");
		appendStringInfo(&s, ",\"arguments\":%s}", tc->arguments);
	}
	appendStringInfoChar(&s, ']');
	return s.data;
}

/* Does any message say "json" (any case)?  OpenAI's JSON mode needs one to */
bool
messages_mention_json(const GenRequest *req)
{
	ListCell   *lc;

	foreach(lc, req->messages)
	{
		const char *t = ((GenMessage *) lfirst(lc))->content;

		for (; t && *t; t++)
			if ((t[0] == 'j' || t[0] == 'J') && pg_strncasecmp(t, "json", 4) == 0)
				return true;
	}
	return false;
}

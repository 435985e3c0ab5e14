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
 * came.  A conversation's prompt hash is taken over its canonical form
 * (messages_canonical), whether it came as messages or from a chat prompt
 * of the registry.
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

/*
 * The canonical form of a conversation, which its prompt hash is taken
 * over: a JSON array with no whitespace, each message an object with, in
 * this order, "role", "content" (absent when null), "tool_calls" (each
 * {"id", "name", "arguments"}, arguments in jsonb's text form) and
 * "tool_call_id", as present.
 */
char *
messages_canonical(List *messages)
{
	StringInfoData s;
	ListCell   *lc;

	initStringInfo(&s);
	appendStringInfoChar(&s, '[');
	foreach(lc, messages)
	{
		GenMessage *m = (GenMessage *) lfirst(lc);

		if (lc != list_head(messages))
			appendStringInfoChar(&s, ',');
		appendStringInfoString(&s, "{\"role\":");
		escape_json(&s, m->role);
		if (m->content)
		{
			appendStringInfoString(&s, ",\"content\":");
			escape_json(&s, m->content);
		}
		if (m->tool_calls)
		{
			ListCell   *tl;

			appendStringInfoString(&s, ",\"tool_calls\":[");
			foreach(tl, m->tool_calls)
			{
				GenToolCall *tc = (GenToolCall *) lfirst(tl);

				if (tl != list_head(m->tool_calls))
					appendStringInfoChar(&s, ',');
				appendStringInfoString(&s, "{\"id\":");
				escape_json(&s, tc->id);
				appendStringInfoString(&s, ",\"name\":");
				escape_json(&s, tc->name);
				appendStringInfo(&s, ",\"arguments\":%s}", tc->arguments);
			}
			appendStringInfoChar(&s, ']');
		}
		if (m->tool_call_id)
		{
			appendStringInfoString(&s, ",\"tool_call_id\":");
			escape_json(&s, m->tool_call_id);
		}
		appendStringInfoChar(&s, '}');
	}
	appendStringInfoChar(&s, ']');
	return s.data;
}

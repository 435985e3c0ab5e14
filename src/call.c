/*-------------------------------------------------------------------------
 *
 * call.c
 *	  A model call: preparing it, finishing it, its result, and the
 *	  grading of its output.
 *
 * A call is prepared from its arguments (request.c): its prompt rendered
 * from the registry or hashed, its route planned, its trace begun, its
 * ledger attached; machine.c then moves it through its phases.  When it
 * ends, it is finished here: its spans queued, its statistics counted, the
 * model_routed line logged, the call captured for replay; and its result
 * is a maester.generation.
 *
 * Grading.  Every successful output is evaluated (evaluate.c).  An
 * llm_rubric check needs a model's verdict, and that verdict is a call of
 * its own through the same machine -- metered, budgeted, traced (its spans
 * under the graded call's evaluation span), with purpose 'evaluation' --
 * not a nested call that would stop every other call of a batch while it
 * runs.  So an output is evaluated twice: a first pass asks the grader
 * (call_grader_ask) which questions the checks pose, without answering;
 * if there are any, one grading call per question is prepared and run
 * beside the other calls, and the graded call waits (PHASE_GRADING); a
 * second pass then answers each question, in the same order, from the
 * grading calls' answers (call_grader_answer).  Checks are deterministic,
 * so both passes ask the same questions.  A grading call that fails makes
 * the evaluation's status error, as an error in any check does; the output
 * itself stays a success.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "call.h"
#include "capture.h"
#include "evaluate.h"
#include "inflight.h"
#include "jsonutil.h"
#include "message.h"
#include "registry.h"
#include "request.h"
#include "respcache.h"
#include "sha256.h"
#include "rubric.h"
#include "settings.h"
#include "stat.h"
#include "tenant.h"
#include "util.h"

/* A fresh version-4 UUID and a W3C trace id (32 lowercase hex digits) */
static void
new_ids(pg_uuid_t *uuid, char *trace_id)
{
	uint8		t[16];

	if (!pg_strong_random(uuid->data, UUID_LEN) || !pg_strong_random(t, sizeof(t)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random values")));
	uuid->data[6] = (uuid->data[6] & 0x0f) | 0x40;
	uuid->data[8] = (uuid->data[8] & 0x3f) | 0x80;
	hex_encode((char *) t, sizeof(t), trace_id);
	trace_id[32] = '\0';
}

static double
elapsed_ms(TimestampTz since)
{
	return (double) (GetCurrentTimestamp() - since) / 1000.0;
}

/* Fail the call: with the last failure and the list of attempts */
void
call_fail(Call *c)
{
	CallState  *cs = &c->cs;

	if (cs->last.error_class == NULL)
	{
		cs->last.error_class = "unavailable";
		cs->last.sqlstate = ERRCODE_MAESTER_UNAVAILABLE;
		cs->last.message = pstrdup("no target could be tried");
	}
	c->phase = PHASE_FAILED;
	c->error_class = cs->last.error_class;
	c->sqlstate = cs->last.sqlstate;
	if (cs->last.fatal)
	{
		c->message = cs->last.message;
		c->detail = cs->last.detail;
		c->hint = cs->last.hint;
		return;
	}
	c->message = psprintf("model call failed: %s", cs->last.message);
	c->detail = psprintf("Requested model: %s. Attempts: %s.",
						 c->plan && c->plan->requested ? c->plan->requested : "(default route)",
						 cs->log.len ? cs->log.data : "none");
	/* a local-only setup still has the shipped default route */
	if (c->plan && c->plan->requested == NULL && cs->nkeyless == c->plan->ntargets)
		c->hint = pstrdup("No model was given, so the route \"default\" was used, and none of its providers has a key. "
						  "Point it at a provider you have (UPDATE maester.route_target SET provider = '...', model = '...' "
						  "WHERE route = 'default'), or pass model => '...'.");
}

/* Fail the call with a failure that is not an attempt's */
void
call_fail_with(Call *c, const char *provider, const char *error_class,
			   int sqlstate, char *message)
{
	Failure		f;

	memset(&f, 0, sizeof(f));
	f.error_class = error_class;
	f.sqlstate = sqlstate;
	f.message = message;
	call_note_failure(c, provider, &f);
}

/* Note a failure (or a skipped target) for the error's detail */
void
call_note_failure(Call *c, const char *provider, const Failure *f)
{
	CallState  *cs = &c->cs;

	appendStringInfo(&cs->log, "%s%s: %s", cs->log.len ? "; " : "", provider,
					 f->error_class);
	cs->last = *f;
}

/* The options a prompt version's config may supply (request.c parses them) */
static const char *const config_options[] = {
	"temperature", "top_p", "stop", "response_format", "tools", "tool_choice", "cache_control",
	"timeout_ms", "max_attempts", "fallback", "tags", "cache"
};

/*
 * A prompt version's config applied to a call: its options under the
 * call's own (the call's win), as one options object for request.c;
 * keys that are not options (model, max_tokens, anything else) are left
 * to the caller.
 */
static Jsonb *
config_with_options(Jsonb *config, Jsonb *call_options)
{
	JsonbParseState *st = NULL;
	JsonbValue *res;
	Jsonb	   *merged;
	bool		any = false;

	(void) pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < lengthof(config_options); i++)
	{
		JsonbValue *v = json_get(&config->root, config_options[i]);
		JsonbValue	k;

		if (v == NULL)
			continue;
		k.type = jbvString;
		k.val.string.val = (char *) config_options[i];
		k.val.string.len = strlen(config_options[i]);
		(void) pushJsonbValue(&st, WJB_KEY, &k);
		(void) pushJsonbValue(&st, WJB_VALUE, v);
		any = true;
	}
	res = pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	if (!any)
		return call_options;
	merged = JsonbValueToJsonb(res);
	if (call_options == NULL)
		return merged;
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(merged),
											  JsonbPGetDatum(call_options)));
}

/*
 * Worst case of a chat call's input tokens: a token per byte of the UTF-8
 * text the provider gets (byte-level BPE emits at least a byte per token),
 * plus the chat format's overhead (7 to 13 tokens measured:
 * test/bench/tokens.sh).  Tools and a schema add their characters to
 * gen->input_chars too.
 */
static int64
worst_input_tokens(GenRequest *gen)
{
	int64		n = 16;
	ListCell   *lc;

	/*
	 * Each message past a system and a user one: its text and 4 tokens
	 * of chat format (the system and user messages of a prompt are
	 * such messages too, within the 16).
	 */
	if (list_length(gen->messages) > 2)
		n += 4 * (list_length(gen->messages) - 2);
	foreach(lc, gen->messages)
	{
		GenMessage *m = (GenMessage *) lfirst(lc);
		ListCell   *tl;

		n += maester_utf8_length(m->content);
		foreach(tl, m->tool_calls)
		{
			GenToolCall *tc = (GenToolCall *) lfirst(tl);

			n += maester_utf8_length(tc->name) + maester_utf8_length(tc->arguments) +
				maester_utf8_length(tc->id) + 8;
		}
		n += maester_utf8_length(m->tool_call_id);
	}
	/*
	 * tool definitions and a schema are sent as input too, and with
	 * tools a provider adds a system prompt of its own (Anthropic's is
	 * 300 to 350 tokens)
	 */
	if (gen->tools != NIL || gen->schema != NULL)
		n += 400;
	foreach(lc, gen->tools)
	{
		GenTool    *t = (GenTool *) lfirst(lc);
		int64		len = maester_utf8_length(t->name) + maester_utf8_length(t->description) +
			maester_utf8_length(t->parameters) + 16;

		n += len;
		gen->input_chars += len;
	}
	if (gen->schema)
	{
		int64		len = maester_utf8_length(gen->schema) + 64;

		n += len;
		gen->input_chars += len;
	}
	return n;
}

/* The call's state, to start: fail closed -- no ledger, no call */
static void
call_ready_to_start(Call *c)
{
	c->cs.slot = ledger_attach();
	c->cs.deadline = GetCurrentTimestamp() + (TimestampTz) c->opts.timeout_ms * 1000;
	initStringInfo(&c->cs.log);
	c->ntargets = c->opts.fallback ? c->plan->ntargets : Min(c->plan->ntargets, 1);
	c->phase = PHASE_TARGET;
}

/*
 * A call, prepared: its arguments checked, its prompt rendered (or
 * hashed), its route planned, its trace begun (under `parent`'s span
 * `under` for a grading call, named `root`).  Raises 22023 for bad
 * arguments, and whatever rendering or routing raises.
 */
static Call *
prepare(CallArgs *a, int ordinal, MemoryContext cxt, const pg_uuid_t *request_id,
		const char *purpose, const char *root, Call *parent, Span *under)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	Call	   *c = palloc0(sizeof(Call));
	Generation *g = &c->g;
	Span	   *route_span;
	text	   *content;
	text	   *system = NULL;
	int			max_tokens = a->max_tokens;

	c->ordinal = ordinal;
	c->cxt = cxt;
	c->args = *a;
	c->started = GetCurrentTimestamp();
	c->tenant = pstrdup(maester_current_tenant());
	c->parent = parent;
	g->purpose = purpose;

	request_check_args(a);
	request_parse_options_alone(a->options, &c->opts);

	new_ids(&g->request_id, g->trace_id);
	if (request_id)
		g->request_id = *request_id;
	g->trace = palloc(sizeof(CallTrace));
	trace_begin(g->trace, root, parent ? parent->g.trace : NULL, under);
	strlcpy(g->trace_id, g->trace->trace_id, sizeof(g->trace_id));
	g->tags = c->opts.tags;
	g->requested_model = a->model;

	/* the prompt */
	if (a->messages != NULL)
	{
		char	   *canon;
		const char *parts[1];
		int			lens[1];

		c->opts.gen.messages = request_messages(a->messages, &c->opts.gen.input_chars);
		canon = messages_canonical(c->opts.gen.messages);
		parts[0] = canon;
		lens[0] = strlen(canon);
		maester_sha256_hex(parts, lens, 1, g->prompt_hash);
		content = NULL;
	}
	else if (a->prompt_name != NULL)
	{
		RenderedPrompt rp;
		Span	   *span = trace_span_start(g->trace, "prompt_render");

		maester_render(a->prompt_name, a->prompt_version, a->variables,
					   c->opts.sticky_key, &rp);
		trace_attr_str(span, "gen_ai.prompt.name", rp.name);
		trace_attr_str(span, "maester.prompt.version", rp.version);
		if (rp.rollout_label != NULL)
		{
			/* the version was picked by a rollout: which, and how */
			trace_attr_str(span, "maester.prompt.rollout", rp.rollout_label);
			trace_attr_str(span, "maester.prompt.rollout.weights", rp.rollout_weights);
			trace_attr_str(span, "maester.prompt.rollout.pick",
						   c->opts.sticky_key ? "sticky" : "random");
		}
		trace_span_end(span, NULL);
		if ((rp.system != NULL || rp.messages != NIL) && a->system != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("prompt \"%s\" version \"%s\" has a system template; do not pass system",
							rp.name, rp.version),
					 rp.messages != NIL ? errdetail("It is a chat prompt, whose messages are the whole conversation.") : 0));
		content = rp.content;
		system = rp.system ? rp.system : a->system;
		g->prompt_name = rp.name;
		g->prompt_version = rp.version;
		g->checks = rp.checks ? DatumGetJsonbPCopy(JsonbPGetDatum(rp.checks)) : NULL;
		/* the version's config, where the call gives nothing of its own */
		if (rp.config != NULL && JB_ROOT_IS_OBJECT(rp.config))
		{
			char	   *model = json_get_string(&rp.config->root, "model");
			int64		mt;

			if (g->requested_model == NULL && model != NULL)
				g->requested_model = model;
			if (a->max_tokens <= 0 && json_get_int64(&rp.config->root, "max_tokens", &mt) &&
				mt > 0 && mt <= PG_INT32_MAX)
				max_tokens = (int) mt;
			request_parse_options_alone(config_with_options(rp.config, a->options), &c->opts);
			g->tags = c->opts.tags;
		}
		if (rp.messages != NIL)
		{
			ListCell   *lc;

			/* a chat prompt: its conversation is what is sent (after the config's options) */
			c->opts.gen.messages = rp.messages;
			foreach(lc, rp.messages)
				c->opts.gen.input_chars += pg_mbstrlen(((GenMessage *) lfirst(lc))->content);
		}
		if (rp.messages == NIL && rp.system == NULL && system != NULL)
			maester_prompt_hash(system, content, g->prompt_hash);
		else
			memcpy(g->prompt_hash, rp.hash, sizeof(g->prompt_hash));
	}
	else
	{
		content = a->prompt;
		system = a->system;
		maester_prompt_hash(system, content, g->prompt_hash);
	}
	request_check_options(&c->opts);
	c->content = content;
	c->system = system;
	/* a provider answers an empty prompt with a 400 (billed by some): not sent */
	if (content != NULL && VARSIZE_ANY_EXHDR(content) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the prompt is empty"),
				 g->prompt_name ?
				 errdetail("Prompt \"%s\" rendered to an empty text.", g->prompt_name) : 0));

	/* route (its strategy orders the targets once the call's size is known) */
	route_span = trace_span_start(g->trace, "model_route");
	trace_attr_str(route_span, "gen_ai.request.model", g->requested_model ? g->requested_model : "(default route)");
	c->plan = router_plan(g->requested_model);
	trace_attr_num(route_span, "maester.route.targets", c->plan->ntargets);
	if (content != NULL)
	{
		GenMessage *user = palloc0(sizeof(GenMessage));

		c->opts.gen.prompt = text_to_cstring(content);
		c->opts.gen.system = system ? text_to_cstring(system) : NULL;
		if (c->opts.gen.system)
		{
			GenMessage *sys = palloc0(sizeof(GenMessage));

			sys->role = "system";
			sys->content = c->opts.gen.system;
			c->opts.gen.messages = list_make1(sys);
			c->opts.gen.input_chars = pg_mbstrlen(c->opts.gen.system);
		}
		user->role = "user";
		user->content = c->opts.gen.prompt;
		c->opts.gen.messages = lappend(c->opts.gen.messages, user);
		c->opts.gen.input_chars += pg_mbstrlen(c->opts.gen.prompt);
	}
	c->opts.gen.max_tokens = max_tokens;
	{
		Span	   *root = &g->trace->spans[0];

		trace_attr_str(root, "gen_ai.operation.name", "chat");
		trace_attr_str(root, "gen_ai.request.model", g->requested_model);
		trace_attr_str(root, "gen_ai.prompt.name", g->prompt_name);
		trace_attr_str(root, "maester.prompt.version", g->prompt_version);
		trace_attr_str(root, "maester.prompt.hash", g->prompt_hash);
		if (c->opts.gen.max_tokens > 0)
			trace_attr_num(root, "gen_ai.request.max_tokens", c->opts.gen.max_tokens);
	}

	c->cs.est_input_tokens = worst_input_tokens(&c->opts.gen);
	route_strategy_apply(c, route_span);
	trace_span_end(route_span, NULL);
	respcache_lookup(c);
	call_ready_to_start(c);
	MemoryContextSwitchTo(old);
	return c;
}

/*
 * An embedding call (embed.c): `inputs` (of char *, each not empty) sent
 * as one request to `model` (NULL: the route default_embedding), with the
 * options embed.c parsed.  Metered, budgeted, traced and retried like any
 * call; not evaluated.  Its prompt_hash is the SHA-256 of the inputs, each
 * followed by a zero byte.
 */
Call *
call_prepare_embedding(List *inputs, const char *model, const CallOptions *opts,
					   int ordinal, MemoryContext cxt)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	Call	   *c = palloc0(sizeof(Call));
	Generation *g = &c->g;
	int			n = list_length(inputs);
	const char **parts = palloc(sizeof(char *) * 2 * n);
	int		   *lens = palloc(sizeof(int) * 2 * n);
	int			k = 0;
	ListCell   *lc;

	c->ordinal = ordinal;
	c->cxt = cxt;
	c->started = GetCurrentTimestamp();
	c->tenant = pstrdup(maester_current_tenant());
	c->opts = *opts;
	c->opts.gen.embedding = true;
	c->opts.gen.inputs = inputs;
	g->purpose = "embedding";
	new_ids(&g->request_id, g->trace_id);
	g->trace = palloc(sizeof(CallTrace));
	trace_begin(g->trace, "embed", NULL, NULL);
	strlcpy(g->trace_id, g->trace->trace_id, sizeof(g->trace_id));
	g->tags = c->opts.tags;
	g->requested_model = model ? pstrdup(model) : NULL;
	if (model)
		router_check_model_name(model);

	/* worst case: a token per byte, and a few per input */
	c->cs.est_input_tokens = 8;
	foreach(lc, inputs)
	{
		const char *s = (const char *) lfirst(lc);

		parts[k] = s;
		lens[k++] = strlen(s);
		parts[k] = "";
		lens[k++] = 1;
		c->cs.est_input_tokens += maester_utf8_length(s) + 2;
		c->opts.gen.input_chars += pg_mbstrlen(s);
	}
	maester_sha256_hex(parts, lens, k, g->prompt_hash);
	{
		Span	   *span = trace_span_start(g->trace, "model_route");

		trace_attr_str(span, "gen_ai.request.model", model ? model : "(default_embedding route)");
		c->plan = router_plan(model ? model : "default_embedding");
		trace_attr_num(span, "maester.route.targets", c->plan->ntargets);
		trace_span_end(span, NULL);
	}
	{
		Span	   *root = &g->trace->spans[0];

		trace_attr_str(root, "gen_ai.operation.name", "embeddings");
		trace_attr_str(root, "gen_ai.request.model", g->requested_model);
		trace_attr_num(root, "maester.embedding.inputs", n);
		if (c->opts.gen.dimensions > 0)
			trace_attr_num(root, "gen_ai.request.embedding.dimensions", c->opts.gen.dimensions);
	}
	call_ready_to_start(c);
	MemoryContextSwitchTo(old);
	return c;
}

/* A call with llm_generate's arguments: see prepare() */
Call *
call_prepare(CallArgs *a, int ordinal, MemoryContext cxt, const pg_uuid_t *request_id)
{
	return prepare(a, ordinal, cxt, request_id, "generation", "llm_generate", NULL, NULL);
}

/*
 * A call that succeeded: usage flags, the root span, its spans queued,
 * statistics, the model_routed log line, and the capture.
 */
void
call_succeeded_finish(Call *c)
{
	Generation *g = &c->g;
	Span	   *root = &g->trace->spans[0];

	/* once only, whatever happens to the transaction it runs in */
	if (c->finished)
		return;
	c->finished = true;
	g->latency_ms = elapsed_ms(c->started);
	g->usage_estimated = !g->resp.usage_present;
	if (c->cs.downgraded)
		g->fallback_used = true;

	trace_attr_str(root, "gen_ai.provider.name", g->provider);
	trace_attr_str(root, "gen_ai.response.model", g->model);
	trace_attr_num(root, "gen_ai.usage.input_tokens", g->resp.input_tokens);
	trace_attr_num(root, "gen_ai.usage.output_tokens", g->resp.output_tokens);
	if (c->opts.gen.embedding)
		trace_attr_num(root, "gen_ai.embeddings.dimension.count", g->resp.dims);
	if (g->cost)
		trace_attr_raw(root, "maester.cost_usd",
					   DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(g->cost))));
	if (g->evaluation)
		trace_attr_str(root, "maester.evaluation.status",
					   json_get_string(&g->evaluation->root, "status"));
	if (c->cache_state != RESPCACHE_OFF)
		trace_attr_str(root, "maester.cache", cache_state_name(c->cache_state));
	trace_flush(g->trace, "ok", c->tenant, &g->request_id);
	/* a cached answer says nothing of the model's latency */
	if (c->cache_state != RESPCACHE_HIT)
		stat_call(g->provider, g->model, false, g->attempts, g->fallback_used, g->latency_ms);

	ereport(maester_routing_log_level,
			(errmsg("model_routed requested_model=%s selected_provider=%s model=%s fallback_used=%s attempts=%d",
					g->requested_model ? g->requested_model : "(default)",
					g->provider, g->model, g->fallback_used ? "true" : "false",
					g->attempts),
			 errhidestmt(true)));

	/* last: the only steps that write in the caller's transaction */
	respcache_store(c);
	if (maester_capture_content && !c->opts.gen.embedding)
		capture_call(g, c->content, c->system, c->args.messages, c->args.variables, c->args.options,
					 c->opts.gen.max_tokens);
}

/*
 * call_succeeded_finish in a subtransaction, for a call that succeeded and
 * is in the ledger: a failure here (the capture's INSERT, say) must not
 * make it a failure.  NULL, or the error for the caller to report (cancel
 * and termination go on).
 */
static void
finish_fn(void *arg)
{
	call_succeeded_finish((Call *) arg);
}

ErrorData *
call_finish_isolated(Call *c)
{
	ErrorData  *edata = maester_subxact(finish_fn, c, c->cxt);

	if (edata != NULL &&
		(edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
		 edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN))
		ReThrowError(edata);
	return edata;
}

/* A failed call's spans and statistics */
void
call_failed_finish(Call *c)
{
	if (c->finished)
		return;				/* counted once, as a success */
	if (c->g.trace)
		trace_flush_nothrow(c->g.trace, c->tenant, &c->g.request_id);
	if (c->g.last_provider)
		stat_call(c->g.last_provider, c->g.last_model, true, c->g.attempts,
				  c->g.fallback_used, elapsed_ms(c->started));
}

static void
generation_values(Generation *g, Datum *values, bool *nulls)
{
	memset(nulls, 0, sizeof(bool) * CALL_GENERATION_NATTS);
	values[0] = UUIDPGetDatum(&g->request_id);
	values[1] = CStringGetTextDatum(g->trace_id);
	if (g->provider)
	{
		values[2] = CStringGetTextDatum(g->provider);
		values[3] = CStringGetTextDatum(g->model);
		values[4] = CStringGetTextDatum(g->resp.content);
	}
	else
		nulls[2] = nulls[3] = nulls[4] = true;
	if (g->resp.finish_reason)
		values[5] = CStringGetTextDatum(g->resp.finish_reason);
	else
		nulls[5] = true;
	values[6] = Int64GetDatum(g->resp.input_tokens);
	values[7] = Int64GetDatum(g->resp.output_tokens);
	values[8] = Int64GetDatum(g->resp.cached_input_tokens);
	values[9] = Int64GetDatum(g->resp.cache_write_tokens);
	values[10] = BoolGetDatum(g->usage_estimated);
	values[11] = Float8GetDatum(g->latency_ms);
	values[12] = Int32GetDatum(g->attempts);
	values[13] = BoolGetDatum(g->fallback_used);
	if (g->prompt_name)
	{
		values[14] = CStringGetTextDatum(g->prompt_name);
		values[15] = CStringGetTextDatum(g->prompt_version);
	}
	else
		nulls[14] = nulls[15] = true;
	values[16] = CStringGetTextDatum(g->prompt_hash);
	if (g->requested_model)
		values[17] = CStringGetTextDatum(g->requested_model);
	else
		nulls[17] = true;
	if (g->resp.response_id)
		values[18] = CStringGetTextDatum(g->resp.response_id);
	else
		nulls[18] = true;
	if (g->cost)
		values[19] = NumericGetDatum(g->cost);
	else
		nulls[19] = true;
	values[20] = BoolGetDatum(g->priced);
	if (g->evaluation)
		values[21] = JsonbPGetDatum(g->evaluation);
	else
		nulls[21] = true;
	/* 0.2.0 */
	if (g->resp.tool_calls)
		values[22] = DirectFunctionCall1(jsonb_in, CStringGetDatum(g->resp.tool_calls));
	else
		nulls[22] = true;
	if (g->resp.parsed)
		values[23] = JsonbPGetDatum(g->resp.parsed);
	else
		nulls[23] = true;
	if (g->resp.refusal)
		values[24] = CStringGetTextDatum(g->resp.refusal);
	else
		nulls[24] = true;
}


/* Raise the error of a FAILED call, as llm_generate does */
void
call_raise(Call *c)
{
	ereport(ERROR,
			(errcode(c->sqlstate),
			 errmsg_internal("%s", c->message),
			 c->detail ? errdetail_internal("%s", c->detail) : 0,
			 c->hint ? errhint("%s", c->hint) : 0));
}

/* The maester.generation fields of a prepared call; false if none */
bool
call_generation_values(Call *c, Datum *values, bool *nulls)
{
	if (c->g.trace == NULL)
		return false;
	generation_values(&c->g, values, nulls);
	values[25] = BoolGetDatum(c->cache_state == RESPCACHE_HIT);
	return true;
}

/* Ask run_calls to stop the call (at its next round) */
void
call_request_cancel(Call *c)
{
	c->cancel_requested = true;
}

/* A call from a request object; raises what llm_generate would */
Call *
call_from_request(Jsonb *request, int ordinal, MemoryContext cxt,
				  const pg_uuid_t *request_id)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	CallArgs	a;
	bool		has_model;
	Call	   *c;

	request_parse(request, &a, &has_model);
	c = call_prepare(&a, ordinal, cxt, request_id);
	MemoryContextSwitchTo(old);
	return c;
}

/* A call that failed before it started (a bad request, ...) */
Call *
call_from_error(int ordinal, MemoryContext cxt, ErrorData *edata)
{
	Call	   *c = MemoryContextAllocZero(cxt, sizeof(Call));

	c->ordinal = ordinal;
	c->cxt = cxt;
	c->phase = PHASE_FAILED;
	c->sqlstate = edata->sqlerrcode;
	c->error_class = "invalid_request";
	c->message = MemoryContextStrdup(cxt, edata->message ? edata->message : "");
	c->detail = edata->detail ? MemoryContextStrdup(cxt, edata->detail) : NULL;
	c->hint = edata->hint ? MemoryContextStrdup(cxt, edata->hint) : NULL;
	return c;
}

/* ---------------------------------------------------------------------
 * Grading: llm_rubric checks as calls of their own (see the header)
 * ---------------------------------------------------------------------
 */

/* The first pass's grader: note the question, answer nothing */
void
call_grader_ask(void *arg, JsonbValue *param, JsonbContainer *extra,
				const char *content, int len, double *score, bool *passed,
				char **reason)
{
	GradeAsks  *a = (GradeAsks *) arg;

	if (a->n == a->max)
	{
		a->max = Max(4, a->max * 2);
		a->prompts = a->prompts ? repalloc(a->prompts, sizeof(char *) * a->max) :
			palloc(sizeof(char *) * a->max);
		a->models = a->models ? repalloc(a->models, sizeof(char *) * a->max) :
			palloc(sizeof(char *) * a->max);
	}
	rubric_question(param, extra, content, len, &a->prompts[a->n], &a->models[a->n]);
	a->n++;
	*score = 0;
	*passed = false;
	*reason = NULL;
}

/* The second pass's grader: the answer of the grading call, in order */
void
call_grader_answer(void *arg, JsonbValue *param, JsonbContainer *extra,
				   const char *content, int len, double *score, bool *passed,
				   char **reason)
{
	GradeAnswers *a = (GradeAnswers *) arg;
	Grade	   *g;

	if (a->next >= a->n)
		elog(ERROR, "an evaluation asked more llm_rubric questions than it did before");
	g = &a->grades[a->next++];
	if (g->failed)
		ereport(ERROR,
				/* a grading call's cancel is not this evaluation's */
				(errcode(g->sqlstate == ERRCODE_QUERY_CANCELED ||
						 g->sqlstate == ERRCODE_ADMIN_SHUTDOWN ?
						 ERRCODE_MAESTER_UNAVAILABLE : g->sqlstate),
				 errmsg_internal("%s", g->message),
				 g->detail ? errdetail_internal("%s", g->detail) : 0,
				 g->hint ? errhint("%s", g->hint) : 0));
	rubric_verdict(g->answer, score, passed, reason);
}

/*
 * A grading call for one llm_rubric question: the question as the prompt,
 * the rubric's model (NULL: the default route), the grader's system prompt
 * and options.  With `parent`, a step of that call (its ordinal, its trace,
 * under its evaluation span); else a call of its own.  Raises what
 * preparing a call raises.
 */
Call *
call_prepare_grader(const char *prompt, const char *model, int ordinal,
					MemoryContext cxt, Call *parent)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	CallArgs	a;
	Call	   *c;

	memset(&a, 0, sizeof(a));
	a.prompt = cstring_to_text(prompt);
	a.model = model ? pstrdup(model) : NULL;
	a.system = cstring_to_text(RUBRIC_SYSTEM);
	a.options = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(RUBRIC_OPTIONS)));
	c = prepare(&a, ordinal, cxt, NULL, "evaluation",
				parent ? "llm_rubric" : "llm_generate",
				parent, parent ? parent->eval_span : NULL);
	MemoryContextSwitchTo(old);
	return c;
}

/* What a finished grading call answered, into `out` (strings in `cxt`) */
void
call_grade_of(Call *grader, Grade *out, MemoryContext cxt)
{
	memset(out, 0, sizeof(*out));
	out->done = true;
	if (grader->phase == PHASE_DONE)
	{
		out->answer = MemoryContextStrdup(cxt, grader->g.resp.content);
		return;
	}
	out->failed = true;
	out->sqlstate = grader->sqlstate;
	out->message = MemoryContextStrdup(cxt, grader->message ? grader->message : "");
	out->detail = grader->detail ? MemoryContextStrdup(cxt, grader->detail) : NULL;
	out->hint = grader->hint ? MemoryContextStrdup(cxt, grader->hint) : NULL;
}

/* The evaluation's context: the attempt's latency and the call's cost */
static Jsonb *
evaluation_context(Call *c)
{
	Generation *g = &c->g;
	double		latency_ms = c->rec ? c->rec->latency_ms : 0;
	StringInfoData j;

	initStringInfo(&j);
	appendStringInfo(&j, "{\"latency_ms\": %.3f", latency_ms);
	if (g->cost)
		appendStringInfo(&j, ", \"cost_usd\": %s",
						 DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(g->cost))));
	/*
	 * A response format's schema is checked too -- but not on a turn that
	 * only calls tools, which is not the answer the schema describes
	 */
	if (c->opts.gen.schema && !(g->resp.content[0] == '\0' && g->resp.tool_calls != NULL))
		appendStringInfo(&j, ", \"response_schema\": %s", c->opts.gen.schema);
	appendStringInfoChar(&j, '}');
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(j.data)));
}

typedef struct EvalPass
{
	Call	   *c;
	Jsonb	   *ctx;
	RubricGrader grader;
	void	   *grader_arg;
	Jsonb	   *checks;
	Jsonb	   *result;
} EvalPass;

/*
 * What the checks see: the content, or, for an answer that is only tool
 * calls, their JSON (so that it is not empty, and is_json or json_schema
 * checks apply to the calls)
 */
static const char *
evaluated_text(Generation *g)
{
	if (g->resp.content[0] == '\0' && g->resp.tool_calls != NULL)
		return g->resp.tool_calls;
	return g->resp.content;
}

static void
evaluate_pass_fn(void *arg)
{
	EvalPass   *ep = (EvalPass *) arg;
	Generation *g = &ep->c->g;
	const char *out = evaluated_text(g);

	ep->result = maester_evaluate(out, strlen(out), ep->checks, ep->ctx, ep->grader,
								  ep->grader_arg);
}

/* {"status": "error", ...}, with a WARNING, for an evaluation that failed */
static Jsonb *
evaluation_error(Call *c, const char *message)
{
	StringInfoData j;

	ereport(WARNING,
			(errmsg("evaluation of the output failed: %s", message),
			 errhint("Check the checks registered with prompt \"%s\".",
					 c->g.prompt_name ? c->g.prompt_name : "")));
	initStringInfo(&j);
	appendStringInfoString(&j, "{\"status\": \"error\", \"reliability_score\": 0, \"metrics\": [], \"error\": ");
	escape_json(&j, message);
	appendStringInfoChar(&j, '}');
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(j.data)));
}

/*
 * One pass over the output with the prompt version's checks (else the
 * articles' default, which needs no grader).  Registered checks run in a
 * subtransaction: a check that errors (a bad regex, a failed grading call)
 * must not lose the generation, so its error becomes an evaluation of
 * status error with a WARNING (*ok false); cancel and termination go on.
 */
static Jsonb *
evaluate_pass(Call *c, RubricGrader grader, void *grader_arg, bool *ok)
{
	EvalPass	ep = {c, evaluation_context(c), grader, grader_arg, c->g.checks, NULL};
	Generation *g = &c->g;
	ErrorData  *edata;

	*ok = true;
	/* the articles' default alone cannot fail: no subtransaction for it */
	if (ep.checks == NULL && json_get(&ep.ctx->root, "response_schema") == NULL)
		return maester_evaluate(evaluated_text(g), strlen(evaluated_text(g)), NULL,
								ep.ctx, NULL, NULL);
	edata = maester_subxact(evaluate_pass_fn, &ep, CurrentMemoryContext);
	if (edata == NULL)
		return ep.result;
	if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
		edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
		ReThrowError(edata);
	*ok = false;
	return evaluation_error(c, edata->message);
}

typedef struct SpawnArg
{
	Call	   *c;
	GradeAsks  *asks;
} SpawnArg;

static void
spawn_graders_fn(void *arg)
{
	SpawnArg   *sa = (SpawnArg *) arg;
	Call	   *c = sa->c;
	int			n = sa->asks->n;

	c->spawned = MemoryContextAllocZero(c->cxt, sizeof(Call *) * n);
	for (int i = 0; i < n; i++)
	{
		MemoryContext cxt = AllocSetContextCreate(c->cxt, "maester grading call",
												  ALLOCSET_DEFAULT_SIZES);
		Call	   *gc = call_prepare_grader(sa->asks->prompts[i], sa->asks->models[i],
											 c->ordinal, cxt, c);

		gc->grade_index = i;
		c->spawned[c->nspawned++] = gc;
	}
}

/*
 * Start evaluating a successful call's output: the first pass.  True when
 * its checks need grading calls: they are prepared (c->spawned, for
 * run_calls to take) and the call waits for them (PHASE_GRADING); false
 * when the evaluation is done (g->evaluation).
 */
bool
call_evaluate_begin(Call *c)
{
	GradeAsks	asks;
	SpawnArg	sa = {c, &asks};
	ErrorData  *edata;
	bool		ok;
	Jsonb	   *ev;

	memset(&asks, 0, sizeof(asks));
	if (c->opts.gen.embedding)
		return false;			/* vectors have no checks */
	c->eval_span = trace_span_start(c->g.trace, "evaluation");
	ev = evaluate_pass(c, call_grader_ask, &asks, &ok);
	if (!ok || asks.n == 0)
	{
		c->g.evaluation = ev;
		return false;
	}

	edata = maester_subxact(spawn_graders_fn, &sa, c->cxt);
	if (edata != NULL)
	{
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
			ReThrowError(edata);
		for (int i = 0; i < c->nspawned; i++)
			MemoryContextDelete(c->spawned[i]->cxt);
		c->spawned = NULL;
		c->nspawned = 0;
		c->g.evaluation = evaluation_error(c, edata->message);
		return false;
	}
	c->ngrades = c->grades_pending = asks.n;
	c->grades = MemoryContextAllocZero(c->cxt, sizeof(Grade) * asks.n);
	c->phase = PHASE_GRADING;
	return true;
}

/* Every grading call has answered: the second pass (g->evaluation) */
void
call_evaluate_end(Call *c)
{
	GradeAnswers ans = {c->grades, c->ngrades, 0};
	bool		ok;

	c->g.evaluation = evaluate_pass(c, call_grader_answer, &ans, &ok);
}

/* A grading call ended: its answer goes to the call it grades, it goes */
void
call_grade_collect(Call *grader)
{
	Call	   *c = grader->parent;

	call_grade_of(grader, &c->grades[grader->grade_index], c->cxt);
	c->grades_pending--;
	MemoryContextDelete(grader->cxt);
}

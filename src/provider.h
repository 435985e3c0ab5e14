/*-------------------------------------------------------------------------
 *
 * provider.h
 *	  The provider interface: what differs between OpenAI, Anthropic and
 *	  OpenAI-compatible servers, as a table of operations per kind
 *	  (ProviderOps), and one attempt's HTTP request and outcome built on it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_PROVIDER_H
#define MAESTER_PROVIDER_H

#include <curl/curl.h>

#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

#include "http.h"

typedef struct ProviderConf ProviderConf;	/* router.h */

/*
 * A tool call, normalized: the model's id for it, the tool's name, and its
 * arguments as JSON text (OpenAI sends them as a string of JSON, Anthropic
 * as an object; either way this is JSON text, or a JSON string when the
 * model wrote something that is not JSON).
 */
typedef struct GenToolCall
{
	char	   *id;
	char	   *name;
	char	   *arguments;
} GenToolCall;

/*
 * One message of a conversation, normalized (request.c): role system,
 * user, assistant or tool; content NULL only for an assistant message that
 * only calls tools; tool_calls (of GenToolCall *) for an assistant's calls;
 * tool_call_id for a tool's result.
 */
typedef struct GenMessage
{
	const char *role;
	const char *content;
	List	   *tool_calls;
	const char *tool_call_id;
} GenMessage;

/* A tool the model may call: name, description, JSON-schema parameters */
typedef struct GenTool
{
	char	   *name;
	char	   *description;	/* NULL: none */
	char	   *parameters;		/* JSON text of an object schema */
	int			strict;			/* -1: not given; else the given boolean */
} GenTool;

typedef enum ToolChoice
{
	TOOL_CHOICE_DEFAULT,		/* not given: the provider's default (auto) */
	TOOL_CHOICE_AUTO,
	TOOL_CHOICE_NONE,
	TOOL_CHOICE_REQUIRED,
	TOOL_CHOICE_NAMED
} ToolChoice;

/* Where Anthropic's prompt cache breakpoint goes (options.cache_control) */
#define CACHE_NONE		0
#define CACHE_SYSTEM	1		/* the system prompt */
#define CACHE_PREFIX	2		/* the system prompt and the conversation
								 * before its last turn */

/* What the gateway asks of a model, independent of the provider */
typedef struct GenRequest
{
	const char *model;			/* the provider's model id */
	const char *system;			/* NULL: none */
	const char *prompt;
	List	   *messages;		/* of GenMessage *: the conversation sent
								 * (system and prompt folded in) */
	int64		input_chars;	/* characters of everything sent as input,
								 * for estimates */
	int			max_tokens;		/* 0: not given */
	bool		has_temperature;
	double		temperature;
	bool		has_top_p;
	double		top_p;
	List	   *stop;			/* of char *; NIL: none */
	bool		json_format;	/* ask for a JSON object */
	char	   *schema_name;	/* response_format json_schema: its name, */
	char	   *schema;			/* the schema (JSON text), */
	char	   *schema_spec;	/* and OpenAI's json_schema object as given */
	List	   *tools;			/* of GenTool *; NIL: none */
	ToolChoice	tool_choice;
	char	   *tool_choice_name;	/* TOOL_CHOICE_NAMED */
	bool		native_schema;	/* Anthropic: output_config.format, not a
								 * forced tool (maester.model) */
	const char *max_tokens_name;	/* the output limit's member; NULL: the
									 * kind's (maester.model) */
	int			cache_at;		/* options.cache_control: CACHE_* */
	bool		cache_1h;		/* its ttl is an hour (else 5 minutes) */
	/* an embedding request (embed.c) instead of a chat one */
	bool		embedding;
	List	   *inputs;			/* of char *: the texts to embed */
	int			dimensions;		/* asked for; 0: the model's */
	const char *input_type;		/* query or document; NULL: none */
	Jsonb	   *extra;			/* options.extra: members added to the body */
} GenRequest;

/*
 * A successful answer, normalized.  input_tokens counts every prompt token
 * (OpenAI's prompt_tokens, which include cached ones; Anthropic's
 * input_tokens plus its cache reads and writes); cached_input_tokens are
 * the cache reads among them, cache_write_tokens the cache writes.
 */
typedef struct GenResponse
{
	char	   *content;
	char	   *refusal;		/* a refusal's text, kept apart from content */
	char	   *tool_calls;		/* JSON text: [{id, name, arguments}], or NULL */
	Jsonb	   *parsed;			/* a structured answer's content, parsed */
	char	   *finish_reason;	/* stop, length, tool_calls, content_filter,
								 * refusal or other (provider.c) */
	char	   *raw_finish_reason;	/* as the provider said it */
	char	   *provider_request_id;	/* its x-request-id / request-id */
	char	   *served_model;
	char	   *response_id;
	int64		input_tokens;
	int64		output_tokens;
	int64		cached_input_tokens;
	int64		cache_write_tokens;
	int64		cache_write_1h_tokens;	/* of the writes, those kept an hour
										 * (Anthropic; priced apart) */
	int64		reasoning_tokens;	/* of the output, reasoning (OpenAI) or
									 * thinking (Anthropic) tokens */
	char	   *service_tier;	/* the tier that served it, as said */
	bool		usage_present;
	/* an embedding answer: one vector per input, in input order */
	int			nvectors;
	int			dims;
	float4	  **vectors;
} GenResponse;

/* One failed attempt (or skipped target), classified for the retry policy */
typedef struct Failure
{
	const char *error_class;	/* rate_limited, server_error, timeout, ... */
	int			sqlstate;
	bool		retryable;
	bool		counts;			/* says something about provider health */
	bool		fatal;			/* stop the call: trying elsewhere cannot help */
	bool		billed;			/* an unusable answer that reported usage */
	char	   *message;
	char	   *detail;			/* for fatal failures: their own detail, hint */
	const char *hint;
	double		retry_after_ms;
	int			http_status;
} Failure;

/* The operations of one provider kind (provider_openai.c, provider_anthropic.c) */
typedef struct ProviderOps
{
	const char *kind;			/* the value of maester.provider.kind */
	const char *path;			/* appended to the base URL */
	/* the kind's authentication and protocol headers; key may be NULL */
	struct curl_slist *(*headers) (struct curl_slist *list, const char *key,
								   const char *api_version);
	void		(*build_body) (const GenRequest *req, StringInfo out);
	bool		(*parse_response) (Jsonb *jb, const GenRequest *req, GenResponse *out,
								   char **problem);
	int			default_max_tokens; /* sent when the call gives none; 0: none sent */
	double		max_temperature;	/* the most it takes (a call's 0 to 2 is cut
									 * to it); 0: 2 */
	bool		deployments;	/* azure: with an api_version, the model is
								 * the deployment in the URL */
	/* embeddings; NULL: the kind has none */
	const char *embed_path;
	void		(*build_embed_body) (const GenRequest *req, StringInfo out);
	bool		(*parse_embed_response) (const char *body, const GenRequest *req,
										 GenResponse *out, char **problem);
} ProviderOps;

/* Estimated output tokens when the call gives none and the kind sends none */
#define ESTIMATE_DEFAULT_MAX_TOKENS 4096

/* the output tokens a call to `p` may produce, for estimates and pacing */
#define PROVIDER_MAX_TOKENS(p, asked) \
	((asked) > 0 ? (asked) : (p)->ops->default_max_tokens > 0 ? \
	 (p)->ops->default_max_tokens : ESTIMATE_DEFAULT_MAX_TOKENS)

extern const ProviderOps openai_ops;
extern const ProviderOps openai_compatible_ops;
extern const ProviderOps anthropic_ops;
extern const ProviderOps azure_ops;

extern const ProviderOps *provider_ops(const char *kind);
extern char *provider_url(const ProviderConf *p);
extern void provider_check_egress(const ProviderConf *p);
extern void provider_request(const ProviderConf *p, const GenRequest *gen,
							 const char *key, const pg_uuid_t *request_id,
							 const char *traceparent, long timeout_ms,
							 HttpRequest *req);
extern void provider_request_free(HttpRequest *req);
extern bool provider_outcome(const ProviderConf *p, const GenRequest *gen,
							 HttpRequest *req, const char *key, GenResponse *out,
							 Failure *f);
extern char *provider_error_summary(const char *body, size_t len,
									const char *secret);

#endif							/* MAESTER_PROVIDER_H */

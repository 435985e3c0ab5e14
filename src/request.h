/*-------------------------------------------------------------------------
 *
 * request.h
 *	  A call's request: its arguments (llm_generate's, or a request
 *	  object's members) and options, parsed and checked in one place.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_REQUEST_H
#define MAESTER_REQUEST_H

#include "utils/jsonb.h"

#include "provider.h"

#define KNOWN_OPTIONS "temperature, top_p, stop, response_format, tools, tool_choice, cache_control, timeout_ms, max_attempts, fallback, tags, extra, sticky_key, cache"
#define STICKY_KEY_MAX 256		/* bytes of options.sticky_key */
#define REQUEST_KEYS "prompt, messages, model, max_tokens, system, prompt_name, variables, prompt_version, options"

/* Per-call options, from the options jsonb */
typedef struct CallOptions
{
	GenRequest	gen;			/* temperature, top_p, stop, json_format */
	int			timeout_ms;		/* overall deadline */
	int			max_attempts;	/* 0: each provider's own */
	bool		fallback;
	char	   *tags;			/* JSON text of options.tags, or NULL */
	char	   *sticky_key;		/* options.sticky_key: the same key lands on
								 * the same rollout arm and route target;
								 * NULL: none */
	/* options.cache: the response cache (respcache.c) */
	bool		cache_given;	/* options.cache was given (else the prompt
								 * version's config decides) */
	bool		cache;			/* look up and keep the answer */
	int64		cache_ttl_us;	/* how long an answer is kept; 0: the default */
	bool		cache_any_temperature;	/* also with a temperature above 0 */
} CallOptions;

/* The arguments of one call, as llm_generate takes them */
typedef struct CallArgs
{
	text	   *prompt;
	Jsonb	   *messages;		/* a conversation, instead of prompt */
	char	   *model;
	int			max_tokens;		/* 0: none */
	text	   *system;
	char	   *prompt_name;
	Jsonb	   *variables;
	char	   *prompt_version;
	Jsonb	   *options;
} CallArgs;

extern void request_parse_options(Jsonb *opts, CallOptions *o);
extern void request_parse_options_alone(Jsonb *opts, CallOptions *o);
extern void request_check_options(const CallOptions *o);
extern void request_parse(Jsonb *req, CallArgs *a, bool *has_model);
extern void request_check_args(const CallArgs *a);
extern void request_with_defaults(Jsonb *req, text *model, text *prompt_name,
								  Jsonb *options, CallArgs *a);
extern void request_validate(Jsonb *request);
extern List *request_messages(Jsonb *messages, int64 *chars);

#endif							/* MAESTER_REQUEST_H */

/*-------------------------------------------------------------------------
 *
 * provider.h
 *	  Provider adapters: build a provider's request body, parse its answer
 *	  into one normalized result, and summarize its error bodies.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_PROVIDER_H
#define MAESTER_PROVIDER_H

#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/jsonb.h"

typedef enum ProviderKind
{
	PROVIDER_OPENAI,			/* Chat Completions at api.openai.com */
	PROVIDER_ANTHROPIC,			/* Messages API */
	PROVIDER_OPENAI_COMPATIBLE	/* any server speaking Chat Completions */
} ProviderKind;

/* What the gateway asks of a model, independent of the provider */
typedef struct GenRequest
{
	const char *model;			/* the provider's model id */
	const char *system;			/* NULL: none */
	const char *prompt;
	int			max_tokens;		/* 0: not given */
	bool		has_temperature;
	double		temperature;
	bool		has_top_p;
	double		top_p;
	List	   *stop;			/* of char *; NIL: none */
	bool		json_format;	/* ask for a JSON object */
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
	char	   *finish_reason;
	char	   *served_model;
	char	   *response_id;
	int64		input_tokens;
	int64		output_tokens;
	int64		cached_input_tokens;
	int64		cache_write_tokens;
	bool		usage_present;
} GenResponse;

extern ProviderKind provider_kind_from_name(const char *kind);
extern const char *provider_kind_name(ProviderKind kind);
extern char *provider_url(ProviderKind kind, const char *base_url);
extern void provider_build_body(ProviderKind kind, const GenRequest *req,
								StringInfo out);
extern bool provider_parse_response(ProviderKind kind, const char *body,
									GenResponse *out, char **problem);
extern char *provider_error_summary(const char *body, size_t len,
									const char *secret);

/* shared JSON helpers (provider.c) */
extern Jsonb *provider_parse_json(const char *body, char **problem);
extern JsonbValue *json_get(JsonbContainer *c, const char *key);
extern char *json_get_string(JsonbContainer *c, const char *key);
extern bool json_get_int64(JsonbContainer *c, const char *key, int64 *out);
extern JsonbContainer *json_get_container(JsonbContainer *c, const char *key);

/* provider_openai.c */
extern void openai_build_body(ProviderKind kind, const GenRequest *req,
							  StringInfo out);
extern bool openai_parse_response(Jsonb *jb, GenResponse *out, char **problem);

/* provider_anthropic.c */
extern void anthropic_build_body(const GenRequest *req, StringInfo out);
extern bool anthropic_parse_response(Jsonb *jb, GenResponse *out, char **problem);

#endif							/* MAESTER_PROVIDER_H */

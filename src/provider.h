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
	bool		usage_present;
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
	bool		(*parse_response) (Jsonb *jb, GenResponse *out, char **problem);
	int			default_max_tokens; /* sent when the call gives none; 0: none sent */
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

extern const ProviderOps *provider_ops(const char *kind);
extern char *provider_url(const ProviderConf *p);
extern void provider_check_egress(const ProviderConf *p);
extern void provider_request(const ProviderConf *p, const GenRequest *gen,
							 const char *key, const pg_uuid_t *request_id,
							 const char *traceparent, long timeout_ms,
							 HttpRequest *req);
extern void provider_request_free(HttpRequest *req);
extern bool provider_outcome(const ProviderConf *p, HttpRequest *req,
							 const char *key, GenResponse *out, Failure *f);
extern char *provider_error_summary(const char *body, size_t len,
									const char *secret);

#endif							/* MAESTER_PROVIDER_H */

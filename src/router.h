/*-------------------------------------------------------------------------
 *
 * router.h
 *	  Providers, models and routes: which targets a requested model has.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_ROUTER_H
#define MAESTER_ROUTER_H

#include "datatype/timestamp.h"
#include "provider.h"

/* One row of maester.provider, as cached per backend */
struct ProviderConf
{
	char	   *name;
	const ProviderOps *ops;		/* what its kind does (provider.h) */
	char	   *base_url;
	char	   *api_key_env;	/* NULL: none */
	char	   *api_key_file;	/* NULL: none */
	int			npatterns;
	text	  **patterns;		/* LIKE patterns of models served */
	int			connect_timeout_ms;
	int			timeout_ms;
	int			max_attempts;
	int			backoff_base_ms;
	int			backoff_max_ms;
	int			circuit_failure_threshold;	/* 0: no breaker */
	int			circuit_cooldown_ms;
	char	   *anthropic_version;
	char	   *api_version;	/* azure: the api-version of deployment URLs */
	int			embedding_batch_tokens; /* most tokens per embeddings request;
										 * 0: OpenAI's 300,000 */
	bool		enabled;
	int			max_connections;	/* per backend; 0: no limit */
	int			requests_per_minute;	/* 0: no limit */
	int			tokens_per_minute;	/* 0: no limit */
};

/*
 * What a model accepts (maester.model's unsupported_params, else the rule
 * of model_rule_caps): sampling parameters it refuses, left out of its
 * requests
 */
#define MODEL_NO_TEMPERATURE	0x01
#define MODEL_NO_TOP_P			0x02
#define MODEL_NO_STOP			0x04
#define MODEL_TEMPERATURE_XOR_TOP_P 0x08	/* not both: top_p is left out */

/* One place a request can be sent: a provider and its model id */
typedef struct RouteTarget
{
	ProviderConf *provider;
	char	   *model;			/* the model id sent */
	char	   *name;			/* its identity, for prices and budgets */
	int			max_output_tokens;	/* its model row's limit; 0: the setting's */
	int			refuses;		/* MODEL_NO_* */
	const char *output_limit_param; /* max_tokens or max_completion_tokens;
									 * NULL: the kind's */
	bool		native_schema;	/* Anthropic: output_config.format */
	int			embedding_dimensions;	/* an embedding model's; 0: unknown */
	int			max_input_tokens;	/* its input limit; 0: unknown */
	int			weight;			/* route_target.weight (strategy weighted) */
	int			position;		/* its place in the route, from 1 */
} RouteTarget;

/* The ordered targets for a requested model (or route) */
typedef struct RoutePlan
{
	const char *requested;		/* what the caller asked for */
	bool		is_route;		/* a named route (or the default route) */
	const char *route;			/* its name */
	const char *strategy;		/* route.strategy; NULL: not a route */
	bool		sticky_tenant;	/* route.sticky = 'tenant' */
	int			ntargets;
	RouteTarget *targets;
} RoutePlan;

/* The longest requested model name, in bytes */
#define MODEL_NAME_MAX 256

extern void router_init(void);
extern void router_check_model_name(const char *name);
extern RoutePlan *router_plan(const char *requested);
extern uint64 router_generation(void);
extern char *router_model_identity(const char *name);
extern const char *router_model_row_id(const char *name);
extern bool router_model_known(const char *name);
extern bool model_snapshot_suffix(const char *s);
extern int	model_rule_caps(const char *kind, const char *model);
extern int	model_base_len(const char *model);

extern void router_tenant_limits(const char *tenant, int *requests_per_minute,
								 int *tokens_per_minute);

#endif							/* MAESTER_ROUTER_H */

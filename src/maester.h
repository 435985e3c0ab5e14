/*-------------------------------------------------------------------------
 *
 * maester.h
 *	  Declarations shared by the modules of the maester extension.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_H
#define MAESTER_H

#include "datatype/timestamp.h"
#include "storage/lwlock.h"
#include "utils/jsonb.h"

/* longest prompt, version or label name, in characters */
#define MAESTER_NAME_MAXLEN 200

/* hex digits of a SHA-256 digest, without the terminating NUL */
#define MAESTER_SHA256_HEXLEN 64

/* longest provider name kept in shared memory, in bytes */
#define MAESTER_PROVIDER_NAMELEN 128

/* settings (maester.c) */
extern char *maester_allow_insecure_hosts;
extern int	maester_max_response_bytes;
extern int	maester_request_timeout_ms;
extern int	maester_retry_after_max_ms;
extern int	maester_routing_log_level;
extern char *maester_key_directory;
extern char *maester_otlp_endpoint;
extern char *maester_otlp_headers;
extern int	maester_max_providers;

/*
 * Circuit breaker state of one provider, in shared memory.  Protected by
 * MaesterShared->lock; entries are found by name and never removed (a
 * provider that disappears just leaves an idle entry).
 */
typedef enum CircuitState
{
	CIRCUIT_CLOSED = 0,			/* calls go through */
	CIRCUIT_OPEN,				/* calls are skipped until the cooldown ends */
	CIRCUIT_HALF_OPEN			/* one probe call is under way */
} CircuitState;

typedef struct MaesterCircuit
{
	char		provider[MAESTER_PROVIDER_NAMELEN];
	CircuitState state;
	int			consecutive_failures;
	TimestampTz opened_at;		/* when it last opened */
	TimestampTz probe_started;	/* when the half-open probe started */
	int64		successes;
	int64		failures;
	int64		opens;
	TimestampTz rate_requests_at;	/* rate pacing: next free request slot */
	TimestampTz rate_tokens_at;	/* and token slot */
} MaesterCircuit;

typedef struct MaesterShared
{
	LWLock	   *lock;
	int			ncircuits;		/* entries in use */
	int			maxcircuits;
	MaesterCircuit circuits[FLEXIBLE_ARRAY_MEMBER];
} MaesterShared;

/* NULL unless maester is in shared_preload_libraries */
extern MaesterShared *maester_shared;

extern void maester_require_preload(void);
extern ErrorData *maester_subxact(void (*fn) (void *), void *arg,
								  MemoryContext errcxt);

/* sha256.c */
extern void maester_sha256_hex(const char *const *parts, const int *lens,
							   int nparts, char *hex_out);

/* router.c */
extern void router_init(void);
extern Oid	maester_relation_owner(Oid relid);

/* registry.c */
typedef struct RenderedPrompt
{
	char	   *name;
	char	   *version;
	text	   *content;
	text	   *system;			/* NULL: no system template */
	char		hash[MAESTER_SHA256_HEXLEN + 1];
	Jsonb	   *checks;			/* the version's checks (cache memory), or NULL */
} RenderedPrompt;

extern void maester_registry_init(void);
extern void maester_render(const char *name, const char *ref, Jsonb *vars,
						   RenderedPrompt *out);
extern void maester_prompt_hash(text *system, text *content, char *hex_out);

/* meter.c */
extern void meter_init(void);
extern struct NumericData *maester_cost(const char *model, int64 input_tokens,
										int64 output_tokens,
										int64 cached_input_tokens,
										int64 cache_write_tokens,
										TimestampTz at, bool *priced);

/* evaluate.c */
extern Jsonb *maester_evaluate(const char *content, int len, Jsonb *checks,
							   Jsonb *context);
extern void maester_validate_checks(Jsonb *checks);

/* gateway.c */
extern const char *maester_call_purpose;
extern bool maester_capture_content;
extern void maester_llm_rubric(JsonbValue *param, JsonbContainer *extra,
							   const char *content, int len, double *score,
							   bool *passed, char **reason);

/* stat.c */
extern int	maester_max_stat_entries;
extern Size stat_shmem_size(void);
extern void stat_shmem_init(void);
extern void stat_attempt(const char *provider, const char *model,
						 const char *error_class, int64 input_tokens,
						 int64 output_tokens, struct NumericData *cost);
extern void stat_call(const char *provider, const char *model, bool failed,
					  int attempts, bool fallback, double latency_ms);

/* secrets.c */
extern char *maester_provider_key(const char *provider, const char *key_env,
								  const char *key_file, char **missing);
extern void maester_forget_key(char *key);

#endif							/* MAESTER_H */

/*-------------------------------------------------------------------------
 *
 * settings.h
 *	  Every maester.* setting, defined in one place (settings.c) so that the
 *	  README's settings table and the code can be checked against each other.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_SETTINGS_H
#define MAESTER_SETTINGS_H

/* job workers per database, at most */
#define MAESTER_MAX_JOB_WORKERS 8

/* the gateway */
extern char *maester_allow_insecure_hosts;
extern int	maester_max_response_bytes;
extern int	maester_request_timeout_ms;
extern int	maester_cache_ttl;
extern int	maester_max_output_tokens;
extern const struct VectorKernels *maester_kernels;	/* NULL: the best */
extern int	maester_retry_after_max_ms;
extern int	maester_routing_log_level;
extern char *maester_key_directory;
extern char *maester_key_hosts;

/* the shipped keys, bound to their vendors' API hosts */
#define MAESTER_DEFAULT_KEY_HOSTS \
	"OPENAI_API_KEY=api.openai.com, ANTHROPIC_API_KEY=api.anthropic.com"
extern bool maester_capture_content;

/* the ledger, tenants and budgets */
extern char *maester_tenant;
extern int	maester_ledger_timeout_ms;
extern bool maester_ledger_wal;
extern bool maester_budget_allow_unpriced;

/* tracing */
extern char *maester_traceparent;
extern double maester_trace_sample_rate;
extern char *maester_otlp_endpoint;
extern char *maester_otlp_headers;

/* jobs */
extern int	maester_job_workers;
extern bool maester_job_retry_interrupted;

/* sizes of shared memory (PGC_POSTMASTER: only with shared_preload_libraries) */
extern int	maester_max_providers;
extern int	maester_max_databases;
extern int	maester_ledger_queue_size;
extern int	maester_max_budgets;
extern int	maester_max_stat_entries;
extern int	maester_job_concurrency;
extern int	maester_span_queue_kb;

/* workers started on demand */
extern int	maester_max_extra_workers;
extern int	maester_callback_timeout_ms;

extern void settings_define(void);

#endif							/* MAESTER_SETTINGS_H */

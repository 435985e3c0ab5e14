/*-------------------------------------------------------------------------
 *
 * settings.c
 *	  Every maester.* setting: its variable, its definition, its check.
 *
 * One file owns them all, so that a reader finds a setting's context,
 * default and limits in one place, and no module depends on another for
 * a setting.  Contexts are chosen on purpose: USERSET for what a caller
 * may tune per call (timeouts, tracing), SUSET for what a superuser
 * decides (egress, capture, logging), SIGHUP for what the workers read,
 * POSTMASTER for the sizes of shared memory.  A POSTMASTER setting can
 * only be defined while the library is preloaded; loaded later, the
 * library works without shared memory (registry only) and those settings
 * keep their defaults.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <limits.h>

#include "miscadmin.h"
#include "utils/guc.h"

#include "hostlist.h"
#include "settings.h"
#include "vector_kernels.h"
#include "tenant.h"

char	   *maester_allow_insecure_hosts = NULL;
char	   *maester_key_hosts = NULL;
int			maester_max_response_bytes = 10 * 1024 * 1024;
int			maester_cache_ttl = 3600;
int			maester_request_timeout_ms = 120000;
int			maester_max_output_tokens = 131072;
int			maester_retry_after_max_ms = 60000;
int			maester_routing_log_level = DEBUG1;
char	   *maester_key_directory = NULL;
bool		maester_capture_content = false;
char	   *maester_tenant = NULL;
char	   *maester_vector_kernels = NULL;
const VectorKernels *maester_kernels = NULL;
int			maester_ledger_timeout_ms = 5000;
bool		maester_ledger_wal = true;
bool		maester_budget_allow_unpriced = false;
char	   *maester_traceparent = NULL;
double		maester_trace_sample_rate = 1.0;
char	   *maester_otlp_endpoint = NULL;
char	   *maester_otlp_headers = NULL;
int			maester_job_workers = 1;
bool		maester_job_retry_interrupted = false;
int			maester_max_providers = 256;
int			maester_max_databases = 8;
int			maester_ledger_queue_size = 512;
int			maester_max_budgets = 256;
int			maester_max_stat_entries = 256;
int			maester_job_concurrency = 16;
int			maester_span_queue_kb = 1024;
int			maester_max_extra_workers = 2;
int			maester_callback_timeout_ms = 60000;

/*
 * maester.otlp_headers: "name=value,name=value", the format of
 * OTEL_EXPORTER_OTLP_HEADERS; names are HTTP tokens, values have no
 * control characters (and no comma).
 */
static bool
check_otlp_headers(char **newval, void **extra, GucSource source)
{
	const char *p = *newval;

	if (p == NULL)
		return true;
	while (*p != '\0')
	{
		const char *name = p;

		while (*p != '\0' && *p != '=' && *p != ',' &&
			   (isalnum((unsigned char) *p) || strchr("!#$%&'*+-.^_`|~", *p) != NULL))
			p++;
		if (p == name || *p != '=')
		{
			GUC_check_errdetail("Each header must be name=value, the name an HTTP token; pairs are separated by commas.");
			return false;
		}
		p++;
		while (*p != '\0' && *p != ',')
		{
			if ((unsigned char) *p < 0x20 || *p == 0x7f)
			{
				GUC_check_errdetail("Header values must not contain control characters.");
				return false;
			}
			p++;
		}
		if (*p == ',')
			p++;
	}
	return true;
}

/* maester.otlp_endpoint: empty, or an http(s) URL without query or fragment */
static bool
check_otlp_endpoint(char **newval, void **extra, GucSource source)
{
	const char *v = *newval;

	if (v == NULL || v[0] == '\0')
		return true;
	if (pg_strncasecmp(v, "http://", 7) != 0 && pg_strncasecmp(v, "https://", 8) != 0)
	{
		GUC_check_errdetail("The OTLP endpoint must start with http:// or https://.");
		return false;
	}
	if (strpbrk(v, "?# \t\r\n") != NULL)
	{
		GUC_check_errdetail("The OTLP endpoint must not contain a query, a fragment or white space.");
		return false;
	}
	return true;
}

/* maester.vector_kernels: auto, or kernels this CPU runs */
static bool
check_vector_kernels(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || strcmp(*newval, "auto") == 0 || vector_kernels_named(*newval) != NULL)
		return true;
	GUC_check_errdetail("This CPU does not run \"%s\" (it runs \"%s\"); use auto, scalar or one it runs.",
						*newval, vector_kernels()->name);
	return false;
}

/* ... and the kernels the vector functions use, chosen once per setting */
static void
assign_vector_kernels(const char *newval, void *extra)
{
	maester_kernels = newval && strcmp(newval, "auto") != 0 ?
		vector_kernels_named(newval) : NULL;
}

/* maester.tenant: a non-empty name, of a tenant the role may act as */
static bool
check_tenant(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || (*newval)[0] == '\0' || strlen(*newval) >= NAMEDATALEN)
	{
		GUC_check_errdetail("maester.tenant must be between 1 and %d bytes.", NAMEDATALEN - 1);
		return false;
	}
	/* and one the role may act as (tenant.c) */
	return tenant_check_setting(*newval, source);
}

/* maester.allow_insecure_hosts: host, host:port or *.domain entries */
static bool
check_host_list(char **newval, void **extra, GucSource source)
{
	char	   *bad;

	if (*newval != NULL && !hostlist_valid(*newval, &bad))
	{
		GUC_check_errdetail("\"%s\" is not a host, host:port or *.domain entry.", bad);
		return false;
	}
	return true;
}

/* maester.key_hosts: KEY=host entries (hostlist.c) */
static bool
check_key_hosts(char **newval, void **extra, GucSource source)
{
	char	   *bad;

	if (*newval != NULL && !keyhosts_valid(*newval, &bad))
	{
		GUC_check_errdetail("\"%s\" is not an entry NAME=host, NAME=host:port or NAME=*.domain, "
							"NAME a key variable (ending in _KEY or _TOKEN) or file:NAME a key file.", bad);
		return false;
	}
	return true;
}

static const struct config_enum_entry log_level_options[] = {
	{"debug5", DEBUG5, false},
	{"debug4", DEBUG4, false},
	{"debug3", DEBUG3, false},
	{"debug2", DEBUG2, false},
	{"debug1", DEBUG1, false},
	{"debug", DEBUG2, true},
	{"info", INFO, false},
	{"notice", NOTICE, false},
	{"log", LOG, false},
	{NULL, 0, false}
};

/* Define every setting; called from _PG_init */
void
settings_define(void)
{
	DefineCustomStringVariable("maester.allow_insecure_hosts",
							   "Hosts that may be reached over plain http and on private or loopback addresses.",
							   "Comma-separated host names or addresses as written in provider URLs, "
							   "each alone (any port), as host:port, or as *.domain "
							   "(for local servers such as the mock provider or Ollama). "
							   "All other providers must use https on public addresses.",
							   &maester_allow_insecure_hosts,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY,
							   check_host_list, NULL, NULL);

	DefineCustomStringVariable("maester.key_hosts",
							   "The hosts each provider key may be sent to.",
							   "Comma-separated entries NAME=host, NAME=host:port or NAME=*.domain; "
							   "NAME is a key variable (api_key_env) or file:NAME a key file (api_key_file). "
							   "A key is sent only to a host its entries name; repeat NAME for more hosts.",
							   &maester_key_hosts,
							   MAESTER_DEFAULT_KEY_HOSTS,
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   check_key_hosts, NULL, NULL);

	DefineCustomIntVariable("maester.max_response_bytes",
							"Largest provider response accepted, in bytes.",
							"A larger response is abandoned and the call fails.",
							&maester_max_response_bytes,
							10 * 1024 * 1024,
							1024, INT_MAX,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomIntVariable("maester.request_timeout_ms",
							"Overall deadline of one model call, all attempts and fallbacks included.",
							"The options key timeout_ms overrides it per call.",
							&maester_request_timeout_ms,
							120000,
							1, INT_MAX,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("maester.cache_ttl",
							"How long the response cache keeps an answer, when the call and its prompt version say nothing.",
							"options.cache.ttl sets it per call, the prompt version's config per version.",
							&maester_cache_ttl,
							3600,
							1, 315360000,
							PGC_USERSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("maester.max_output_tokens",
							"Largest max_tokens a call may ask of a model without an output limit of its own.",
							"maester.model.max_output_tokens sets a model's; a larger max_tokens skips the target. "
							"It bounds what one call reserves of budgets and of a provider's tokens_per_minute.",
							&maester_max_output_tokens,
							131072,
							1, INT_MAX,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("maester.retry_after_max_ms",
							"Longest Retry-After wait honoured before a retry.",
							"When a provider asks to wait longer, the call falls back to the next target instead.",
							&maester_retry_after_max_ms,
							60000,
							0, INT_MAX,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomEnumVariable("maester.log_routing",
							 "Message level of the model_routed line logged for every call.",
							 NULL,
							 &maester_routing_log_level,
							 DEBUG1,
							 log_level_options,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("maester.tenant",
							   "Tenant charged for this session's model calls.",
							   "Applications set it per transaction (SET LOCAL maester.tenant = ...); every ledger row carries it, and row-level security shows users their tenant's rows.",
							   &maester_tenant,
							   "default",
							   PGC_USERSET,
							   0,
							   check_tenant, NULL, NULL);

	DefineCustomStringVariable("maester.vector_kernels",
							   "The SIMD kernels of inner_product, cosine_similarity and l2_distance.",
							   "auto (the best this CPU runs), or avx512, avx2, neon or scalar, for tests and benchmarks; one this CPU cannot run is refused.",
							   &maester_vector_kernels,
							   "auto",
							   PGC_USERSET,
							   0,
							   check_vector_kernels, assign_vector_kernels, NULL);

	DefineCustomIntVariable("maester.ledger_timeout_ms",
							"How long a call waits for the usage ledger before failing.",
							"A call whose ledger row cannot be made durable in time fails before anything is sent.",
							&maester_ledger_timeout_ms,
							5000,
							10, INT_MAX,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("maester.ledger_wal",
							 "Backends make their ledger records durable in WAL themselves.",
							 "Each PENDING and SETTLE record is also a WAL message its caller flushes while the resident worker writes the row, so the worker commits without waiting for a flush; a replication slot per database (maester_ledger_<oid>) keeps that WAL until the rows are durable. Off, or without a free replication slot: the worker's synchronous commits make records durable.",
							 &maester_ledger_wal,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("maester.traceparent",
							   "The application's W3C traceparent: calls become children of its span.",
							   "Set it per transaction (SET LOCAL maester.traceparent = '00-...'); an invalid value is ignored with a WARNING.",
							   &maester_traceparent,
							   "",
							   PGC_USERSET,
							   0,
							   NULL, NULL, NULL);

	DefineCustomRealVariable("maester.trace_sample_rate",
							 "Share of calls whose spans are recorded.",
							 "Sampling drops whole traces, never ledger rows.",
							 &maester_trace_sample_rate,
							 1.0,
							 0.0, 1.0,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("maester.capture_content",
							 "Keeps the prompts, variables and outputs of calls (for replay).",
							 "Off by default: prompt and response text are stored only when it is on.",
							 &maester_capture_content,
							 false,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("maester.budget_allow_unpriced",
							 "Lets calls to models without a price pass budgets.",
							 "By default a budget blocks models it cannot price.",
							 &maester_budget_allow_unpriced,
							 false,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("maester.key_directory",
							   "Directory from which providers' api_key_file may be read.",
							   "Empty disables key files. Files must be owned by the server's user and not readable by others.",
							   &maester_key_directory,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("maester.otlp_endpoint",
							   "OpenTelemetry collector to which spans are exported (OTLP/HTTP JSON).",
							   "The base URL; spans are posted to {endpoint}/v1/traces. Empty disables export.",
							   &maester_otlp_endpoint,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   check_otlp_endpoint, NULL, NULL);

	DefineCustomStringVariable("maester.otlp_headers",
							   "Headers sent with every OTLP export, as name=value pairs separated by commas.",
							   "The format of OTEL_EXPORTER_OTLP_HEADERS, e.g. the collector's API key. Visible to superusers only.",
							   &maester_otlp_headers,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   check_otlp_headers, NULL, NULL);

	DefineCustomIntVariable("maester.job_workers",
							"Processes per database that run the jobs of maester.submit.",
							"The database's resident worker runs jobs; more job workers are started when jobs wait, up to this number in all, within maester.max_extra_workers. 0 stops running jobs (they stay queued).",
							&maester_job_workers,
							1,
							0, MAESTER_MAX_JOB_WORKERS,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("maester.max_extra_workers",
							"Background workers maester may start on demand, over all databases: job workers beyond the resident ones, and callback workers.",
							"Part of max_worker_processes, beside the launcher and one resident worker per database that uses maester.",
							&maester_max_extra_workers,
							2,
							0, 64,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("maester.callback_timeout",
							"Longest a job's callback procedure may run.",
							"A callback that runs longer is cancelled (statement_timeout); its error is kept in maester.job.callback_error.",
							&maester_callback_timeout_ms,
							60000,
							1, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("maester.job_retry_interrupted",
							 "Requeues a job whose worker stopped while its call was in flight.",
							 "Off (the default): such a job is marked review, since the provider may have answered and billed it; on: it runs again (it may be billed twice).",
							 &maester_job_retry_interrupted,
							 false,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	/*
	 * A PGC_POSTMASTER setting can only be defined while preloading; loaded
	 * later, the library works without shared memory (registry only).
	 */
	if (process_shared_preload_libraries_in_progress)
	{
		DefineCustomIntVariable("maester.max_providers",
								"Entries for circuit breakers and rate pacing in shared memory, over all databases.",
								"One per database and provider (pacing), and one per database, provider and model called (circuit breaker); idle entries are reused when the table is full.",
								&maester_max_providers,
								256,
								1, 10000,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);

		DefineCustomIntVariable("maester.max_databases",
								"Databases that can use the gateway at the same time (one ledger queue and worker each).",
								NULL,
								&maester_max_databases,
								8,
								1, 1000,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);

		DefineCustomIntVariable("maester.span_queue_size",
								"Room for spans waiting to be written, per database.",
								"A full queue drops spans (never calls); a span takes 300 to 600 bytes.",
								&maester_span_queue_kb,
								1024,
								64, 1024 * 1024,
								PGC_POSTMASTER,
								GUC_UNIT_KB,
								NULL, NULL, NULL);

		DefineCustomIntVariable("maester.ledger_queue_size",
								"Ledger records that can wait for the database's resident worker.",
								NULL,
								&maester_ledger_queue_size,
								512,
								16, 1000000,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);

		DefineCustomIntVariable("maester.max_budgets",
								"Budgets whose counters are kept in shared memory, over all databases.",
								NULL,
								&maester_max_budgets,
								256,
								1, 100000,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);

		DefineCustomIntVariable("maester.max_stat_entries",
								"Provider and model pairs whose statistics are kept in shared memory (maester.stat).",
								NULL,
								&maester_max_stat_entries,
								256,
								1, 100000,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);

		DefineCustomIntVariable("maester.job_concurrency",
								"Calls each job worker keeps in flight at once.",
								NULL,
								&maester_job_concurrency,
								16,
								1, 256,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);
	}

	MarkGUCPrefixReserved("maester");
}

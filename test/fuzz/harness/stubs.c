/*
 * stubs.c -- symbols the linked src/ files refer to but the fuzzed paths
 * never use: settings.c's GUC variables, read by http.c's transfer and
 * egress code (http_request_init, http_check_url, the socket callbacks),
 * none of which a target runs.  settings.c itself is not linked (it
 * defines the GUCs, which need _PG_init and the rest of the extension).
 */
#include "postgres.h"

__attribute__((weak)) char *maester_allow_insecure_hosts = NULL;
__attribute__((weak)) int maester_max_response_bytes = 10 * 1024 * 1024;

/*
 * hostlist.c (maester.allow_insecure_hosts matching), called by http.c's
 * egress check only.  Weak: if the real one is ever linked, it wins.
 */
extern bool hostlist_match(const char *list, const char *host, int port);

__attribute__((weak)) bool
hostlist_match(const char *list, const char *host, int port)
{
	abort();					/* never reached by a fuzz target */
}

/*-------------------------------------------------------------------------
 *
 * http.h
 *	  HTTP transfers over libcurl, driven by PostgreSQL's latch and sockets.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_HTTP_H
#define MAESTER_HTTP_H

#include <curl/curl.h>

/* How a transfer ended, as far as the gateway's retry policy cares */
typedef enum HttpOutcome
{
	HTTP_OK,					/* a complete response (any status) */
	HTTP_CONNECT_FAILED,		/* could not resolve or connect */
	HTTP_TIMEOUT,				/* connect or total timeout */
	HTTP_NETWORK_ERROR,			/* reset, nothing received, broken body */
	HTTP_TOO_LARGE,				/* response over the size cap */
	HTTP_EGRESS_DENIED,			/* refused by our egress policy */
	HTTP_INTERNAL_ERROR			/* anything else curl reported */
} HttpOutcome;

/*
 * One request and its response.  Everything a curl callback writes lives
 * here and is malloc'd (never palloc'd: callbacks must not throw).  Set the
 * inputs, call http_perform(), read the outputs, then http_request_cleanup().
 */
typedef struct HttpRequest
{
	/* inputs */
	const char *url;
	struct curl_slist *headers; /* owned: freed by http_request_cleanup */
	const char *body;
	size_t		body_len;
	long		connect_timeout_ms;
	long		timeout_ms;
	size_t		max_response_bytes;
	bool		allow_private;	/* host is in maester.allow_insecure_hosts */

	/* outputs */
	HttpOutcome outcome;
	long		status;			/* HTTP status, 0 if none */
	char	   *response;		/* malloc'd, NUL-terminated */
	size_t		response_len;
	size_t		response_cap;
	double		retry_after_ms; /* from Retry-After(-ms), or -1 */
	bool		retry_after_exact;	/* it came from retry-after-ms */
	int			should_retry;	/* x-should-retry: 1 true, 0 false, -1 absent */
	char		request_id[128];	/* x-request-id or request-id, "" if none */
	char		content_type[128];
	char		error[CURL_ERROR_SIZE + 64];	/* curl's or our message */
	char		egress_reason[128];	/* the address the egress check refused */
	double		elapsed_ms;		/* curl's total time */

	/* private */
	CURL	   *easy;
	bool		done;
	bool		too_large;
	bool		egress_denied;
	bool		out_of_fds;		/* no file descriptor was left for a socket */
} HttpRequest;

extern void http_request_init(HttpRequest *req);
extern void http_perform(HttpRequest **reqs, int nreqs);
extern void http_submit(HttpRequest *req);
extern void http_step(long max_wait_ms);
extern void http_abort(HttpRequest *req);
extern void http_request_cleanup(HttpRequest *req);
extern char *http_url_host(const char *url, int *port, bool *https);
extern void http_check_url(const char *url, bool *allow_private);

#endif							/* MAESTER_HTTP_H */

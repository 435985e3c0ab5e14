/*-------------------------------------------------------------------------
 *
 * http.c
 *	  HTTP transfers over libcurl's multi interface, waiting on curl's
 *	  sockets together with MyLatch in a PostgreSQL WaitEventSet.
 *
 * Why this shape:
 *	 - Cancel, statement_timeout and pg_terminate_backend must stop a call
 *	   promptly, and waiting on a silent upstream must use no CPU.  So we
 *	   never block inside curl: curl tells us (socket callback) which
 *	   sockets it wants and (curl_multi_timeout) when it next needs to run; we
 *	   sleep in WaitEventSetWait() on those sockets plus the latch, and call
 *	   CHECK_FOR_INTERRUPTS() on every wake-up.
 *	 - Nothing that can throw runs inside a curl callback: callbacks only
 *	   record (malloc'd buffers, flags, static arrays) and return curl's
 *	   abort code; errors are raised after curl has returned.
 *	 - When an interrupt (or any error) escapes the wait loop, every
 *	   unfinished transfer is removed from the multi handle before the
 *	   error propagates: libcurl closes a connection whose transfer was
 *	   removed prematurely, so nothing stays open to the upstream.
 *	 - One multi handle per backend, created on first use, keeps its
 *	   connection cache across calls (keep-alive reuse); easy handles are
 *	   pooled too.
 *	 - Egress: no redirects; http and https only; the address curl is about
 *	   to connect to (after DNS) is checked in the open-socket callback, and
 *	   loopback, private, link-local and unspecified addresses are refused
 *	   unless the URL's host (or host and port) is listed in
 *	   maester.allow_insecure_hosts, the same superuser-only setting that
 *	   permits plain http.
 *	 - Never CURLOPT_VERBOSE: it would print the Authorization header.
 *	 - Sockets are file descriptors PostgreSQL counts (AcquireExternalFD in
 *	   the open-socket callback, ReleaseExternalFD in the close-socket
 *	   one): when none is left, the attempt fails as a connection error
 *	   that says so, instead of the backend running out of descriptors for
 *	   its own files.  The idle connection cache is bounded.
 *
 * How the wait is made: on Linux, the socket callback keeps curl's sockets
 * in an epoll set of our own as curl announces them, and one WaitEventSet
 * made once per process (MyLatch, postmaster death, and that epoll set's
 * descriptor, readable when any of curl's sockets is ready) serves every
 * wait, as PostgreSQL's own WaitLatch does with its LatchWaitSet.  Building
 * a WaitEventSet at every wait instead costs an epoll_create, an
 * epoll_ctl for each socket and a close: with 64 transfers in flight, an
 * eighth of a busy job worker's CPU.  Both descriptors are counted
 * (AcquireExternalFD) and live as long as the process; a socket the set
 * cannot take (epoll_ctl fails) fails the step it happened in, as too many
 * sockets do.  Elsewhere than Linux, or when the two cannot be had (no
 * descriptor to spare), a WaitEventSet is created and freed around each
 * wait (they are not tracked by resource owners in PostgreSQL 15), and
 * interrupts are checked only after it is freed.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/epoll.h>
#define HTTP_EPOLL 1
#endif

#include "miscadmin.h"
#include "storage/fd.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"

#include "hostlist.h"
#include "http.h"
#include "settings.h"

/* curl's sockets of interest, maintained by the socket callback */
#define HTTP_MAX_SOCKETS 2048		/* 2 x 256 transfers (calls, grading calls), each possibly racing two connects */

typedef struct HttpSocket
{
	curl_socket_t fd;
	int			what;			/* CURL_POLL_IN / OUT / INOUT */
} HttpSocket;

static CURLM *http_multi = NULL;

/*
 * One external descriptor held back from curl's sockets for the wait's
 * epoll set (CreateWaitEventSet takes one): given back just before the
 * set is made, taken again after it is freed.  Curl opens sockets only
 * inside curl_multi_* calls, never in between.
 */
static bool http_fd_reserved = false;
static HttpSocket http_sockets[HTTP_MAX_SOCKETS];
static int	http_nsockets = 0;
static bool http_socket_overflow = false;

#ifdef HTTP_EPOLL
/*
 * curl's sockets in an epoll set of our own (-1: none, wait the slow way),
 * and the process's WaitEventSet over MyLatch, postmaster death and it.
 */
static int	http_epfd = -1;
static int	http_epoll_errno = 0;	/* an epoll_ctl failed: raised at the next step */
static WaitEventSet *http_wait_set = NULL;
static int	http_wait_latch_pos = -1;
static struct epoll_event http_epoll_ready[HTTP_MAX_SOCKETS];

/* Keep socket `s` in the epoll set as curl wants it (`what`); never throws */
static void
http_epoll_update(curl_socket_t s, int what, bool known)
{
	struct epoll_event ev;

	if (http_epfd < 0)
		return;
	if (what == CURL_POLL_REMOVE)
	{
		/* (a socket curl already closed has left the set by itself) */
		(void) epoll_ctl(http_epfd, EPOLL_CTL_DEL, s, NULL);
		return;
	}
	memset(&ev, 0, sizeof(ev));
	ev.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0);
	ev.data.fd = s;
	/*
	 * A socket curl closed without saying so has left the set, and its
	 * number may come back as a new socket: ADD and MOD each fall back on
	 * the other.
	 */
	if (epoll_ctl(http_epfd, known ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s, &ev) == 0)
		return;
	if ((known && errno == ENOENT) || (!known && errno == EEXIST))
	{
		if (epoll_ctl(http_epfd, known ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, s, &ev) == 0)
			return;
	}
	http_epoll_errno = errno;
}
#endif

/*
 * Idle connections kept for reuse (keep-alive).  Each is a file descriptor
 * counted against max_files_per_process (AcquireExternalFD, as dblink and
 * postgres_fdw do); connections in use are not limited by this.
 */
#define HTTP_IDLE_CONNECTIONS 64

#define HTTP_EASY_POOL 16
static CURL *http_easy_pool[HTTP_EASY_POOL];
static int	http_easy_pooled = 0;

/* curl socket callback: remember which sockets curl waits on, and how */
static int
http_socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	int			i;
	bool		known;

	for (i = 0; i < http_nsockets; i++)
		if (http_sockets[i].fd == s)
			break;
	if (what == CURL_POLL_REMOVE)
	{
		if (i < http_nsockets)
			http_sockets[i] = http_sockets[--http_nsockets];
#ifdef HTTP_EPOLL
		http_epoll_update(s, what, true);
#endif
		return 0;
	}
	known = i < http_nsockets;
	if (!known)
	{
		if (http_nsockets == HTTP_MAX_SOCKETS)
		{
			http_socket_overflow = true;
			return -1;
		}
		http_nsockets++;
	}
#ifdef HTTP_EPOLL
	http_epoll_update(s, what, known);
#endif
	http_sockets[i].fd = s;
	http_sockets[i].what = what;
	return 0;
}

#ifdef HTTP_EPOLL
/*
 * The epoll set for curl's sockets and the process's WaitEventSet over it,
 * made once with the multi handle.  Without them (no descriptor left, say)
 * every wait builds its own WaitEventSet, as elsewhere.
 */
static void
http_epoll_init(void)
{
	int			fd;

	/*
	 * Two descriptors: ours, and the set's own, which CreateWaitEventSet
	 * counts itself (and raises when none is left).  Without both, wait the
	 * slow way.
	 */
	if (!AcquireExternalFD())
		return;
	if (!AcquireExternalFD())
	{
		ReleaseExternalFD();
		return;
	}
	ReleaseExternalFD();		/* (CreateWaitEventSet takes it again) */
	fd = epoll_create1(EPOLL_CLOEXEC);
	if (fd < 0)
	{
		ReleaseExternalFD();
		return;
	}
	PG_TRY();
	{
		http_wait_set = CreateWaitEventSet(TopMemoryContext, 3);
		http_wait_latch_pos = AddWaitEventToSet(http_wait_set, WL_LATCH_SET, PGINVALID_SOCKET,
												MyLatch, NULL);
		AddWaitEventToSet(http_wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
		AddWaitEventToSet(http_wait_set, WL_SOCKET_READABLE, fd, NULL, NULL);
	}
	PG_CATCH();
	{
		if (http_wait_set != NULL)
			FreeWaitEventSet(http_wait_set);	/* (gives its descriptor back) */
		http_wait_set = NULL;
		close(fd);
		ReleaseExternalFD();
		PG_RE_THROW();
	}
	PG_END_TRY();
	http_epfd = fd;
}

/*
 * A socket the epoll set could not take: the transfers in flight cannot
 * all be waited for, so the step fails (its caller aborts them all).
 */
static void
http_raise_epoll_error(void)
{
	int			e = http_epoll_errno;

	if (e == 0)
		return;
	http_epoll_errno = 0;
	errno = e;
	ereport(ERROR,
			(errcode(e == ENOMEM ? ERRCODE_OUT_OF_MEMORY :
					 e == ENOSPC ? ERRCODE_CONFIGURATION_LIMIT_EXCEEDED : ERRCODE_SYSTEM_ERROR),
			 errmsg("could not watch an HTTP connection: %m"),
			 e == ENOSPC ? errhint("Raise the kernel's fs.epoll.max_user_watches.") : 0));
}
#endif

/* Create the backend's multi handle on first use (not inlined: PG_TRY) */
pg_noinline static CURLM *
http_get_multi(void)
{
	if (http_multi == NULL)
	{
		CURLM	   *m;

		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not initialize libcurl")));
#ifdef HTTP_EPOLL
		if (http_epfd < 0)
			http_epoll_init();
#endif
		m = curl_multi_init();
		if (m == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory"),
					 errdetail("Could not create a libcurl multi handle.")));
		curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, http_socket_cb);
		curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long) HTTP_IDLE_CONNECTIONS);
		http_multi = m;
		/* the slow way's wait takes a descriptor for each set it makes */
#ifdef HTTP_EPOLL
		if (http_epfd < 0)
#endif
			http_fd_reserved = AcquireExternalFD();
	}
	return http_multi;
}

/*
 * The host (palloc'd; IPv6 in brackets) and port (the scheme's default
 * when the URL has none) of a URL, and whether it is https.  Raises 22023
 * when the URL does not parse.
 */
char *
http_url_host(const char *url, int *port, bool *https)
{
	CURLU	   *u = curl_url();
	char	   *scheme = NULL;
	char	   *host = NULL;
	char	   *portstr = NULL;
	char	   *result;

	if (u == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
		curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
		curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
		curl_url_get(u, CURLUPART_PORT, &portstr, CURLU_DEFAULT_PORT) != CURLUE_OK)
	{
		curl_free(scheme);
		curl_free(host);
		curl_url_cleanup(u);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid provider URL \"%s\"", url)));
	}
	*port = atoi(portstr);
	*https = pg_strcasecmp(scheme, "https") == 0;
	if (!*https && pg_strcasecmp(scheme, "http") != 0)
		*port = -1;				/* neither: refused by http_check_url */
	result = pstrdup(host);
	curl_free(scheme);
	curl_free(host);
	curl_free(portstr);
	curl_url_cleanup(u);
	return result;
}

/*
 * Check a URL against the egress policy before anything is sent: it must
 * parse, be http or https, and plain http is allowed only for hosts (and
 * ports) listed in maester.allow_insecure_hosts.  Sets *allow_private for
 * the open-socket check.  Raises 42501 when refused, 22023 when the URL is
 * not valid.
 */
void
http_check_url(const char *url, bool *allow_private)
{
	int			port;
	bool		https;
	char	   *host = http_url_host(url, &port, &https);
	bool		listed = port > 0 && hostlist_match(maester_allow_insecure_hosts, host, port);

	if (port < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("egress to \"%s\" refused: only http and https are allowed", host)));
	if (!https && !listed)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("egress to \"%s:%d\" refused: only https is allowed", host, port),
				 errhint("A superuser can allow plain http to a local server by listing its host, or host:port, in maester.allow_insecure_hosts.")));
	*allow_private = listed;
	pfree(host);
}

/* Is this resolved address loopback, private, link-local or unspecified? */
static bool
address_is_private(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
	{
		uint32		a = ntohl(((const struct sockaddr_in *) sa)->sin_addr.s_addr);

		return (a >> 24) == 0 ||	/* 0.0.0.0/8 */
			(a >> 24) == 10 ||	/* 10/8 */
			(a >> 24) == 127 || /* loopback */
			(a >> 20) == 0xAC1 ||	/* 172.16/12 */
			(a >> 16) == 0xC0A8 ||	/* 192.168/16 */
			(a >> 16) == 0xA9FE ||	/* 169.254/16 link-local */
			(a >> 22) == (100 << 2 | 1) ||	/* 100.64/10 shared */
			(a >> 17) == (0xC612 >> 1) ||	/* 198.18/15 benchmarking */
			(a >> 28) >= 0xE;	/* multicast and reserved */
	}
	if (sa->sa_family == AF_INET6)
	{
		const struct in6_addr *a = &((const struct sockaddr_in6 *) sa)->sin6_addr;

		if (IN6_IS_ADDR_V4MAPPED(a) || IN6_IS_ADDR_V4COMPAT(a))
		{
			struct sockaddr_in v4;

			memset(&v4, 0, sizeof(v4));
			v4.sin_family = AF_INET;
			memcpy(&v4.sin_addr, &a->s6_addr[12], 4);
			return address_is_private((struct sockaddr *) &v4);
		}
		/* NAT64 (64:ff9b::/96) and 6to4 (2002::/16) embed an IPv4 address */
		if ((a->s6_addr[0] == 0x00 && a->s6_addr[1] == 0x64 &&
			 a->s6_addr[2] == 0xff && a->s6_addr[3] == 0x9b) ||
			(a->s6_addr[0] == 0x20 && a->s6_addr[1] == 0x02))
		{
			struct sockaddr_in v4;

			memset(&v4, 0, sizeof(v4));
			v4.sin_family = AF_INET;
			memcpy(&v4.sin_addr, a->s6_addr[0] == 0x20 ? &a->s6_addr[2] : &a->s6_addr[12], 4);
			return address_is_private((struct sockaddr *) &v4);
		}
		return IN6_IS_ADDR_LOOPBACK(a) || IN6_IS_ADDR_UNSPECIFIED(a) ||
			IN6_IS_ADDR_LINKLOCAL(a) || IN6_IS_ADDR_SITELOCAL(a) ||
			IN6_IS_ADDR_MULTICAST(a) ||
			(a->s6_addr[0] & 0xfe) == 0xfc; /* fc00::/7 unique local */
	}
	return true;				/* unknown families are refused */
}

/* curl open-socket callback: the egress check on the resolved address */
static curl_socket_t
http_opensocket_cb(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
	HttpRequest *req = (HttpRequest *) clientp;
	curl_socket_t fd;

	if (!req->allow_private && address_is_private(&address->addr))
	{
		char		ip[INET6_ADDRSTRLEN] = "?";

		if (address->family == AF_INET)
			inet_ntop(AF_INET, &((struct sockaddr_in *) &address->addr)->sin_addr, ip, sizeof(ip));
		else if (address->family == AF_INET6)
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *) &address->addr)->sin6_addr, ip, sizeof(ip));
		req->egress_denied = true;
		strlcpy(req->egress_reason, ip, sizeof(req->egress_reason));
		return CURL_SOCKET_BAD;
	}
	/* a socket is a file descriptor PostgreSQL must know of (fd.c) */
	if (!AcquireExternalFD())
	{
		req->out_of_fds = true;
		return CURL_SOCKET_BAD;
	}
	fd = socket(address->family, address->socktype, address->protocol);
	if (fd == CURL_SOCKET_BAD)
		ReleaseExternalFD();
	return fd;
}

/* curl close-socket callback: the descriptor goes back to PostgreSQL's count */
static int
http_closesocket_cb(void *clientp, curl_socket_t fd)
{
	int			rc = close(fd);

	ReleaseExternalFD();
	return rc;
}

/* curl write callback: append to the response, within the size cap */
static size_t
http_write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	HttpRequest *req = (HttpRequest *) userp;
	size_t		n = size * nmemb;

	if (req->response_len + n > req->max_response_bytes)
	{
		req->too_large = true;
		return 0;				/* abort the transfer */
	}
	if (req->response_len + n + 1 > req->response_cap)
	{
		size_t		cap = Max(req->response_cap * 2, req->response_len + n + 1);
		char	   *p;

		cap = Max(cap, 4096);
		p = realloc(req->response, cap);
		if (p == NULL)
			return 0;
		req->response = p;
		req->response_cap = cap;
	}
	memcpy(req->response + req->response_len, data, n);
	req->response_len += n;
	req->response[req->response_len] = '\0';
	return n;
}

/* a longer Retry-After is taken as a day: no caller waits that long anyway */
#define HTTP_RETRY_AFTER_MAX_MS (86400.0 * 1000.0)

/* curl header callback: Retry-After, and a reset on each new status line */
static size_t
http_header_cb(char *data, size_t size, size_t nitems, void *userp)
{
	HttpRequest *req = (HttpRequest *) userp;
	size_t		n = size * nitems;
	char		value[64];
	size_t		vlen;
	const char *v;
	bool		ms = false;

	if (n >= 5 && strncmp(data, "HTTP/", 5) == 0)
	{
		req->retry_after_ms = -1;
		req->retry_after_exact = false;
		req->should_retry = -1;
		req->request_id[0] = '\0';
		return n;
	}
	/* the provider's id of the request (OpenAI x-request-id, Anthropic request-id) */
	if ((n > 13 && pg_strncasecmp(data, "x-request-id:", 13) == 0) ||
		(n > 11 && pg_strncasecmp(data, "request-id:", 11) == 0))
	{
		const char *w = (const char *) memchr(data, ':', n) + 1;
		size_t		k = 0;

		while (w < data + n && (*w == ' ' || *w == '\t'))
			w++;
		/* printable ASCII only: it goes to the ledger and the logs */
		while (w < data + n && *w > ' ' && *w < 0x7f && k < sizeof(req->request_id) - 1)
			req->request_id[k++] = *w++;
		req->request_id[k] = '\0';
		return n;
	}
	/* the SDKs' override of their retry rules */
	if (n > 15 && pg_strncasecmp(data, "x-should-retry:", 15) == 0)
	{
		const char *w = data + 15;

		while (w < data + n && (*w == ' ' || *w == '\t'))
			w++;
		if (data + n - w >= 4 && pg_strncasecmp(w, "true", 4) == 0)
			req->should_retry = 1;
		else if (data + n - w >= 5 && pg_strncasecmp(w, "false", 5) == 0)
			req->should_retry = 0;
		return n;
	}
	/* retry-after-ms wins over retry-after, in whichever order they come */
	if (n > 12 && pg_strncasecmp(data, "retry-after:", 12) == 0)
	{
		if (req->retry_after_exact)
			return n;
		v = data + 12;
	}
	else if (n > 15 && pg_strncasecmp(data, "retry-after-ms:", 15) == 0)
	{
		v = data + 15;
		ms = true;
	}
	else
		return n;

	while (v < data + n && (*v == ' ' || *v == '\t'))
		v++;
	vlen = Min((size_t) (data + n - v), sizeof(value) - 1);
	memcpy(value, v, vlen);
	while (vlen > 0 && (value[vlen - 1] == '\r' || value[vlen - 1] == '\n' ||
						value[vlen - 1] == ' '))
		vlen--;
	value[vlen] = '\0';
	if (vlen == 0)
		return n;
	if ((value[0] >= '0' && value[0] <= '9') || value[0] == '.')
	{
		char	   *end;
		double		d = strtod(value, &end);

		/* finite, and at most a day (test/fuzz: 1e300 and Infinity came in) */
		if (end != value && d >= 0 && !isinf(d) && !isnan(d))
		{
			req->retry_after_ms = Min(ms ? d : d * 1000.0, HTTP_RETRY_AFTER_MAX_MS);
			req->retry_after_exact = ms;
		}
	}
	else
	{
		time_t		t = curl_getdate(value, NULL);

		if (t > 0)
			req->retry_after_ms = Min(Max(0, (double) (t - time(NULL)) * 1000.0),
									  HTTP_RETRY_AFTER_MAX_MS);
	}
	return n;
}

/* Prepare a request struct (no allocation) */
void
http_request_init(HttpRequest *req)
{
	memset(req, 0, sizeof(*req));
	req->retry_after_ms = -1;
	req->should_retry = -1;
	req->max_response_bytes = (size_t) maester_max_response_bytes;
	req->connect_timeout_ms = 10000;
	req->timeout_ms = 60000;
}

/* Take an easy handle from the pool, or make one */
static CURL *
http_get_easy(void)
{
	CURL	   *e;

	if (http_easy_pooled > 0)
	{
		e = http_easy_pool[--http_easy_pooled];
		curl_easy_reset(e);
		return e;
	}
	e = curl_easy_init();
	if (e == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory"),
				 errdetail("Could not create a libcurl easy handle.")));
	return e;
}

/* Detach a request's easy handle from the multi handle and pool it */
static void
http_release_easy(HttpRequest *req)
{
	if (req->easy == NULL)
		return;
	if (http_multi != NULL)
		curl_multi_remove_handle(http_multi, req->easy);
	if (http_easy_pooled < HTTP_EASY_POOL)
		http_easy_pool[http_easy_pooled++] = req->easy;
	else
		curl_easy_cleanup(req->easy);
	req->easy = NULL;
}

/* Free what a request owns; safe to call more than once */
void
http_request_cleanup(HttpRequest *req)
{
	http_release_easy(req);
	if (req->headers)
		curl_slist_free_all(req->headers);
	req->headers = NULL;
	free(req->response);
	req->response = NULL;
	req->response_len = req->response_cap = 0;
}

/* Set the options of one transfer and add it to the multi handle */
static void
http_start(CURLM *multi, HttpRequest *req)
{
	CURL	   *e = http_get_easy();
	CURLMcode	mc;

	req->easy = e;
	req->done = false;
	req->status = 0;
	req->error[0] = '\0';
	req->content_type[0] = '\0';
	curl_easy_setopt(e, CURLOPT_URL, req->url);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	/* no proxy from the environment: the egress check must see the target */
	curl_easy_setopt(e, CURLOPT_PROXY, "");
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, req->headers);
	curl_easy_setopt(e, CURLOPT_POST, 1L);
	curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->body);
	curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->body_len);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, Max(1L, req->connect_timeout_ms));
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, Max(1L, req->timeout_ms));
	curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) req->max_response_bytes);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, http_write_cb);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, req);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, http_header_cb);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, req);
	curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, http_opensocket_cb);
	curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, req);
	curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, http_closesocket_cb);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, req->error);
	curl_easy_setopt(e, CURLOPT_PRIVATE, req);
	curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
	curl_easy_setopt(e, CURLOPT_USERAGENT, "maester/" MAESTER_VERSION);
	mc = curl_multi_add_handle(multi, e);
	if (mc != CURLM_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not start HTTP transfer: %s", curl_multi_strerror(mc))));
}

/*
 * Did curl give up on a response header over CURL_MAX_HTTP_HEADER?  Before
 * 8.6 it reports CURLE_OUT_OF_MEMORY (with an empty error buffer), later
 * CURLE_TOO_LARGE.  Out of memory after the status line arrived is taken
 * for it: its allocations are tiny and bounded until a header grows.
 */
static bool
http_header_too_large(CURLcode code, long status)
{
#if LIBCURL_VERSION_NUM >= 0x080600
	if (code == CURLE_TOO_LARGE)
		return true;
#endif
	return code == CURLE_OUT_OF_MEMORY && status > 0;
}

/* Record how a finished transfer ended */
static void
http_finish(HttpRequest *req, CURLcode code)
{
	char	   *ct = NULL;
	double		total = 0;

	req->done = true;
	curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &req->status);
	curl_easy_getinfo(req->easy, CURLINFO_TOTAL_TIME, &total);
	req->elapsed_ms = total * 1000.0;
	if (curl_easy_getinfo(req->easy, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct)
		strlcpy(req->content_type, ct, sizeof(req->content_type));

	if (req->out_of_fds)
	{
		req->outcome = HTTP_CONNECT_FAILED;
		snprintf(req->error, sizeof(req->error),
				 "out of file descriptors for connections (max_files_per_process = %d); retry when fewer calls are in flight",
				 max_files_per_process);
	}
	else if (req->egress_denied)
	{
		req->outcome = HTTP_EGRESS_DENIED;
		snprintf(req->error, sizeof(req->error),
				 "connection to private or loopback address %s refused",
				 req->egress_reason);
	}
	else if (req->too_large || code == CURLE_FILESIZE_EXCEEDED)
	{
		req->outcome = HTTP_TOO_LARGE;
		snprintf(req->error, sizeof(req->error),
				 "response larger than maester.max_response_bytes (%zu bytes)",
				 req->max_response_bytes);
	}
	else if (http_header_too_large(code, req->status))
	{
		/* curl's own cap on a header line: a bad response, not our memory */
		req->outcome = HTTP_TOO_LARGE;
		snprintf(req->error, sizeof(req->error),
				 "a response header longer than libcurl's limit of %d bytes",
				 CURL_MAX_HTTP_HEADER);
	}
	else if (code == CURLE_OK)
		req->outcome = HTTP_OK;
	else if (code == CURLE_OPERATION_TIMEDOUT)
		req->outcome = HTTP_TIMEOUT;
	else if (code == CURLE_COULDNT_RESOLVE_HOST || code == CURLE_COULDNT_CONNECT ||
			 code == CURLE_COULDNT_RESOLVE_PROXY)
		req->outcome = HTTP_CONNECT_FAILED;
	else if (code == CURLE_RECV_ERROR || code == CURLE_SEND_ERROR ||
			 code == CURLE_GOT_NOTHING || code == CURLE_PARTIAL_FILE ||
			 code == CURLE_SSL_CONNECT_ERROR || code == CURLE_HTTP2 ||
			 code == CURLE_HTTP2_STREAM)
		req->outcome = HTTP_NETWORK_ERROR;
	else
		req->outcome = HTTP_INTERNAL_ERROR;
	if (req->outcome != HTTP_OK && req->error[0] == '\0')
		strlcpy(req->error, curl_easy_strerror(code), sizeof(req->error));
	if (req->response == NULL)
	{
		req->response = strdup("");
		req->response_len = 0;
	}
	http_release_easy(req);
}

/* Collect finished transfers from curl */
static void
http_collect(CURLM *multi)
{
	CURLMsg    *msg;
	int			left;

	while ((msg = curl_multi_info_read(multi, &left)) != NULL)
	{
		if (msg->msg == CURLMSG_DONE)
		{
			HttpRequest *req = NULL;

			curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &req);
			if (req != NULL && !req->done)
				http_finish(req, msg->data.result);
		}
	}
}

/*
 * Start a transfer on the backend's multi handle.  It runs while the caller
 * calls http_step(); req->done says when it has finished.
 */
void
http_submit(HttpRequest *req)
{
	CURLM	   *multi = http_get_multi();
	int			running = 0;

	http_start(multi, req);
	curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
	http_collect(multi);
}

/* Stop a transfer that has not finished; its connection is closed */
void
http_abort(HttpRequest *req)
{
	if (!req->done)
		http_release_easy(req);
}

#ifdef HTTP_EPOLL
/*
 * The wait through the process's WaitEventSet (see the header): at most
 * `timeout` ms for the latch or one of curl's sockets (none when 0), then
 * the sockets that are ready, into `ready`; how many.
 */
static int
http_epoll_wait(long timeout, HttpSocket *ready)
{
	WaitEvent	events[3];
	int			nevents = 0;
	bool		sockets = timeout == 0;
	int			n;
	int			nready = 0;

	if (timeout > 0)
	{
		ModifyWaitEvent(http_wait_set, http_wait_latch_pos, WL_LATCH_SET, MyLatch);
		nevents = WaitEventSetWait(http_wait_set, timeout, events, lengthof(events),
								   PG_WAIT_EXTENSION);
	}
	for (int i = 0; i < nevents; i++)
	{
		if (events[i].events & WL_LATCH_SET)
			ResetLatch(MyLatch);
		if (events[i].events & WL_SOCKET_READABLE)
			sockets = true;
	}
	if (!sockets)
		return 0;
	n = epoll_wait(http_epfd, http_epoll_ready, HTTP_MAX_SOCKETS, 0);
	for (int i = 0; i < n; i++)
	{
		uint32		ev = http_epoll_ready[i].events;

		ready[nready].fd = http_epoll_ready[i].data.fd;
		ready[nready].what =
			((ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) ? CURL_CSELECT_IN : 0) |
			((ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)) ? CURL_CSELECT_OUT : 0) |
			((ev & EPOLLERR) ? CURL_CSELECT_ERR : 0);
		nready++;
	}
	return nready;
}
#endif

/*
 * Wait at most max_wait_ms (less when curl's timers say so) for one of
 * curl's sockets or MyLatch, then let curl work and mark the transfers that
 * finished.  Interrupts are checked after every wait; an error leaves the
 * transfers running, and the caller aborts them (http_abort).
 */
void
http_step(long max_wait_ms)
{
	CURLM	   *multi = http_get_multi();
	WaitEvent	events[HTTP_MAX_SOCKETS + 2];
	HttpSocket	ready[HTTP_MAX_SOCKETS];
	int			nready = 0;
	int			running = 0;
	long		timeout;
	WaitEventSet *volatile set = NULL;

	if (http_socket_overflow)
	{
		http_socket_overflow = false;
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many concurrent HTTP connections")));
	}
#ifdef HTTP_EPOLL
	http_raise_epoll_error();
#endif

	/* sleep until a socket is ready, curl's timer fires, or the latch */
	if (curl_multi_timeout(multi, &timeout) != CURLM_OK || timeout < 0)
		timeout = 1000;
	timeout = Min(timeout, Max(max_wait_ms, 0));
#ifdef HTTP_EPOLL
	if (http_epfd >= 0)
		nready = http_epoll_wait(timeout, ready);
	else
#endif
	if (timeout > 0)
	{
		int			nsock = http_nsockets;
		int			nevents;

		if (http_fd_reserved)
		{
			ReleaseExternalFD();
			http_fd_reserved = false;
		}
		PG_TRY();
		{
			set = CreateWaitEventSet(CurrentMemoryContext, nsock + 2);
			AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
			AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
			for (int i = 0; i < nsock; i++)
			{
				uint32		ev = 0;

				if (http_sockets[i].what & CURL_POLL_IN)
					ev |= WL_SOCKET_READABLE;
				if (http_sockets[i].what & CURL_POLL_OUT)
					ev |= WL_SOCKET_WRITEABLE;
				AddWaitEventToSet(set, ev, http_sockets[i].fd, NULL, NULL);
			}
			nevents = WaitEventSetWait(set, timeout, events, nsock + 2,
									   PG_WAIT_EXTENSION);
		}
		PG_CATCH();
		{
			if (set != NULL)
				FreeWaitEventSet(set);
			http_fd_reserved = AcquireExternalFD();
			PG_RE_THROW();
		}
		PG_END_TRY();
		for (int i = 0; i < nevents; i++)
		{
			if (events[i].events & WL_LATCH_SET)
				ResetLatch(MyLatch);
			if (events[i].events & (WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE))
			{
				ready[nready].fd = events[i].fd;
				ready[nready].what =
					((events[i].events & WL_SOCKET_READABLE) ? CURL_CSELECT_IN : 0) |
					((events[i].events & WL_SOCKET_WRITEABLE) ? CURL_CSELECT_OUT : 0);
				nready++;
			}
		}
		FreeWaitEventSet(set);
		set = NULL;
		http_fd_reserved = AcquireExternalFD();
	}

	CHECK_FOR_INTERRUPTS();

	for (int i = 0; i < nready; i++)
		curl_multi_socket_action(multi, ready[i].fd, ready[i].what, &running);
	if (nready == 0)
		curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
	http_collect(multi);
#ifdef HTTP_EPOLL
	http_raise_epoll_error();	/* in the step it happened, not a later call's */
#endif
}

/*
 * Run the given requests concurrently until each has finished.  On any
 * error (an interrupt included) the unfinished transfers are torn down
 * before it propagates.
 */
void
http_perform(HttpRequest **reqs, int nreqs)
{
	PG_TRY();
	{
		for (int i = 0; i < nreqs; i++)
			http_submit(reqs[i]);
		for (;;)
		{
			bool		all_done = true;

			for (int i = 0; i < nreqs; i++)
				all_done &= reqs[i]->done;
			if (all_done)
				break;
			http_step(1000);
		}
	}
	PG_CATCH();
	{
		for (int i = 0; i < nreqs; i++)
			http_abort(reqs[i]);
		PG_RE_THROW();
	}
	PG_END_TRY();
}

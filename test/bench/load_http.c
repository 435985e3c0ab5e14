/*
 * load_http: the HTTP client of test/bench/portkey.sh.  The same Chat
 * Completions POST as direct_http.c, on libcurl (the HTTP stack maester
 * uses), with extra request headers (Portkey wants its x-portkey-* ones),
 * in two modes:
 *
 *   load_http seq URL N [HEADER...]
 *       N sequential requests over one keep-alive handle; prints each
 *       request's latency in microseconds, one per line (as direct_http).
 *   load_http load URL C SECONDS [HEADER...]
 *       keeps C requests in flight for SECONDS on libcurl's multi interface
 *       (one event loop, C keep-alive connections: a new request starts as
 *       soon as one ends) and prints one line:
 *           calls=N errors=E seconds=S cpu=CPU
 *       calls = requests answered 200 within the time, errors = the others
 *       (transport errors and other statuses), CPU = this process's user +
 *       system seconds.  Requests still in flight at the end are not counted.
 *
 * Any failure in seq mode stops it (exit 1); load mode counts errors and
 * goes on, and prints the first error to stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <curl/curl.h>

static const char *body = "{\"model\":\"bench-model\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}],\"stream\":false}";

static size_t
sink(char *data, size_t size, size_t nmemb, void *userp)
{
	(void) data;
	(void) userp;
	return size * nmemb;
}

static double
now_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

/* one request handle, set up as direct_http does */
static CURL *
new_handle(const char *url, struct curl_slist *h)
{
	CURL	   *c = curl_easy_init();

	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
	curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 30000L);
	return c;
}

static int
run_seq(const char *url, int n, struct curl_slist *h)
{
	CURL	   *c = new_handle(url, h);

	for (int i = 0; i < n; i++)
	{
		double		a, b;
		long		status = 0;
		CURLcode	rc;

		a = now_us();
		rc = curl_easy_perform(c);
		b = now_us();
		if (rc != CURLE_OK)
		{
			fprintf(stderr, "request %d failed: %s\n", i, curl_easy_strerror(rc));
			return 1;
		}
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
		if (status != 200)
		{
			fprintf(stderr, "request %d: HTTP %ld\n", i, status);
			return 1;
		}
		printf("%.1f\n", b - a);
	}
	curl_easy_cleanup(c);
	return 0;
}

static int
run_load(const char *url, int conc, double seconds, struct curl_slist *h)
{
	CURLM	   *m = curl_multi_init();
	CURL	  **hs = calloc(conc, sizeof(CURL *));
	long		calls = 0, errors = 0;
	int			running = 0, reported = 0;
	double		start, end, t;
	struct rusage ru;

	/* room in the connection cache for one keep-alive connection each */
	curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long) conc * 2);
	for (int i = 0; i < conc; i++)
	{
		hs[i] = new_handle(url, h);
		curl_multi_add_handle(m, hs[i]);
	}
	start = now_us();
	end = start + seconds * 1e6;
	for (;;)
	{
		CURLMsg    *msg;
		int			left;

		curl_multi_perform(m, &running);
		t = now_us();
		while ((msg = curl_multi_info_read(m, &left)) != NULL)
		{
			CURL	   *c;
			long		status = 0;

			if (msg->msg != CURLMSG_DONE)
				continue;
			c = msg->easy_handle;
			curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
			if (t <= end)
			{
				if (msg->data.result == CURLE_OK && status == 200)
					calls++;
				else
				{
					errors++;
					if (!reported++)
						fprintf(stderr, "load_http: first error: %s, HTTP %ld\n",
								curl_easy_strerror(msg->data.result), status);
				}
			}
			curl_multi_remove_handle(m, c);
			/* the same handle again: it keeps its connection alive */
			if (t < end)
				curl_multi_add_handle(m, c);
		}
		if (t >= end)
			break;
		curl_multi_poll(m, NULL, 0, 10, NULL);
	}
	getrusage(RUSAGE_SELF, &ru);
	printf("calls=%ld errors=%ld seconds=%.3f cpu=%.3f\n", calls, errors,
		   (t - start) / 1e6,
		   ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
		   ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
	for (int i = 0; i < conc; i++)
	{
		curl_multi_remove_handle(m, hs[i]);
		curl_easy_cleanup(hs[i]);
	}
	free(hs);
	curl_multi_cleanup(m);
	return 0;
}

int
main(int argc, char **argv)
{
	struct curl_slist *h = NULL;
	int			first_header, rc;

	if (argc >= 4 && strcmp(argv[1], "seq") == 0)
		first_header = 4;
	else if (argc >= 5 && strcmp(argv[1], "load") == 0)
		first_header = 5;
	else
	{
		fprintf(stderr, "usage: load_http seq URL N [HEADER...]\n"
				"       load_http load URL C SECONDS [HEADER...]\n");
		return 2;
	}
	curl_global_init(CURL_GLOBAL_DEFAULT);
	h = curl_slist_append(h, "Content-Type: application/json");
	h = curl_slist_append(h, "Accept: application/json");
	h = curl_slist_append(h, "Expect:");
	for (int i = first_header; i < argc; i++)
		h = curl_slist_append(h, argv[i]);
	if (first_header == 4)
		rc = run_seq(argv[2], atoi(argv[3]), h);
	else
		rc = run_load(argv[2], atoi(argv[3]), atof(argv[4]), h);
	curl_slist_free_all(h);
	curl_global_cleanup();
	return rc;
}

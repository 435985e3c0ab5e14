/*
 * direct_http: the baseline of test/bench/gateway.sh.  Sends N sequential
 * POSTs of a Chat Completions request to URL over one keep-alive libcurl
 * handle (the HTTP stack maester uses) and prints each request's latency in
 * microseconds, one per line.
 *
 *   direct_http URL N
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <curl/curl.h>

static size_t
sink(char *data, size_t size, size_t nmemb, void *userp)
{
	(void) data;
	(void) userp;
	return size * nmemb;
}

int
main(int argc, char **argv)
{
	const char *body = "{\"model\":\"bench-model\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}],\"stream\":false}";
	struct curl_slist *h = NULL;
	CURL	   *c;
	int			n;

	if (argc != 3)
	{
		fprintf(stderr, "usage: direct_http URL N\n");
		return 2;
	}
	n = atoi(argv[2]);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	c = curl_easy_init();
	h = curl_slist_append(h, "Content-Type: application/json");
	h = curl_slist_append(h, "Accept: application/json");
	h = curl_slist_append(h, "Expect:");
	curl_easy_setopt(c, CURLOPT_URL, argv[1]);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
	curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	for (int i = 0; i < n; i++)
	{
		struct timespec a, b;
		long		status = 0;

		clock_gettime(CLOCK_MONOTONIC, &a);
		if (curl_easy_perform(c) != CURLE_OK)
		{
			fprintf(stderr, "request %d failed\n", i);
			return 1;
		}
		clock_gettime(CLOCK_MONOTONIC, &b);
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
		if (status != 200)
		{
			fprintf(stderr, "request %d: HTTP %ld\n", i, status);
			return 1;
		}
		printf("%.1f\n", (b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3);
	}
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	curl_global_cleanup();
	return 0;
}

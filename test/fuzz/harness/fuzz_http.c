/*
 * fuzz_http.c -- reach http.c's static header callback: this file compiles
 * src/http.c itself (it is not compiled separately into maester_fuzz.so).
 */
#include "http.c"

int			fuzz_http_header(HttpRequest *req, char *data, size_t n);

int
fuzz_http_header(HttpRequest *req, char *data, size_t n)
{
	return (int) http_header_cb(data, 1, n, req);
}

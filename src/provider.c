/*-------------------------------------------------------------------------
 *
 * provider.c
 *	  The provider interface: one attempt's HTTP request to a provider and
 *	  what its answer means, whatever the provider's kind.
 *
 * What differs between kinds -- the endpoint's path, authentication and
 * protocol headers, the request body, the shape of the answer -- is a
 * table of operations per kind (ProviderOps, in provider_openai.c and
 * provider_anthropic.c); nothing outside those files asks which kind a
 * provider is.  This file builds the request every kind shares (URL,
 * egress check, timeouts, JSON and tracing headers, the request id) and
 * classifies the outcome for the retry policy (provider_outcome).
 *
 * A provider's body is untrusted input: parsing never throws on it
 * (jsonutil.c), so malformed answers become clear gateway errors, never
 * crashes; error details summarize a body with the key masked (any run of
 * 8 bytes of it, plain, base64'd or percent-encoded).  Keys are
 * put only into a curl header list, which provider_request_free wipes.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/base64.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/elog.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"

#include "jsonutil.h"
#include "maester.h"
#include "provider.h"
#include "router.h"

static const ProviderOps *const all_ops[] = {&openai_ops, &anthropic_ops, &openai_compatible_ops,
&azure_ops};

/* The operations of a provider kind (the provider.kind column has a CHECK) */
const ProviderOps *
provider_ops(const char *kind)
{
	for (int i = 0; i < lengthof(all_ops); i++)
		if (strcmp(all_ops[i]->kind, kind) == 0)
			return all_ops[i];
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown provider kind \"%s\"", kind),
			 errhint("Use openai, anthropic, openai_compatible or azure.")));
	return NULL;				/* keep compiler quiet */
}

/* The base URL (without trailing slashes) and `path` */
static char *
url_with(const ProviderConf *p, const char *path)
{
	size_t		len = strlen(p->base_url);

	while (len > 0 && p->base_url[len - 1] == '/')
		len--;
	return psprintf("%.*s%s", (int) len, p->base_url, path);
}

/* The endpoint URL: the base URL and the kind's path */
char *
provider_url(const ProviderConf *p)
{
	return url_with(p, p->ops->path);
}

/*
 * The URL of one request: provider_url, except for Azure deployments (an
 * api_version given): {base_url}/openai/deployments/{model}/chat/completions
 * ?api-version={api_version}, both escaped (a model id with a '/' or '?'
 * cannot reach another path).  The host is the base URL's either way, so
 * the egress and key checks of provider_url hold for it.
 */
static char *
request_url(const ProviderConf *p, const GenRequest *gen)
{
	char	   *model;
	char	   *version;
	char	   *url;

	if (!p->ops->deployments || p->api_version == NULL)
		return url_with(p, gen->embedding ? p->ops->embed_path : p->ops->path);
	model = curl_easy_escape(NULL, gen->model, 0);
	version = curl_easy_escape(NULL, p->api_version, 0);
	if (model == NULL || version == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	url = url_with(p, psprintf("/openai/deployments/%s/%s?api-version=%s", model,
							   gen->embedding ? "embeddings" : "chat/completions", version));
	curl_free(model);
	curl_free(version);
	return url;
}

/* Raise 42501 (or 22023) if the egress policy forbids the provider's URL */
void
provider_check_egress(const ProviderConf *p)
{
	bool		allow_private;

	http_check_url(provider_url(p), &allow_private);
}

/*
 * The HTTP request of one attempt: body, URL (checked against the egress
 * policy: raises 42501 or 22023), timeouts, and a header list holding the
 * key (wiped by provider_request_free).
 */
void
provider_request(const ProviderConf *p, const GenRequest *gen, const char *key,
				 const pg_uuid_t *request_id, const char *traceparent,
				 long timeout_ms, HttpRequest *req)
{
	StringInfoData body;
	char	   *url = request_url(p, gen);
	struct curl_slist *h = NULL;
	char		line[1024];
	char		uuid[UUID_LEN * 2 + 5];

	initStringInfo(&body);
	if (gen->embedding)
		p->ops->build_embed_body(gen, &body);
	else
		p->ops->build_body(gen, &body);

	http_request_init(req);
	http_check_url(url, &req->allow_private);
	req->url = url;
	/* providers speak UTF-8, whatever the database's encoding */
	req->body = pg_server_to_any(body.data, body.len, PG_UTF8);
	req->body_len = strlen(req->body);
	req->connect_timeout_ms = Min((long) p->connect_timeout_ms, timeout_ms);
	req->timeout_ms = timeout_ms;

	h = curl_slist_append(h, "Content-Type: application/json");
	h = curl_slist_append(h, "Accept: application/json");
	h = curl_slist_append(h, "Expect:");
	snprintf(uuid, sizeof(uuid),
			 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
			 request_id->data[0], request_id->data[1], request_id->data[2],
			 request_id->data[3], request_id->data[4], request_id->data[5],
			 request_id->data[6], request_id->data[7], request_id->data[8],
			 request_id->data[9], request_id->data[10], request_id->data[11],
			 request_id->data[12], request_id->data[13], request_id->data[14],
			 request_id->data[15]);
	snprintf(line, sizeof(line), "X-Request-Id: %s", uuid);
	h = curl_slist_append(h, line);
	h = p->ops->headers(h, key, p->anthropic_version);
	if (traceparent)
	{
		snprintf(line, sizeof(line), "traceparent: %s", traceparent);
		h = curl_slist_append(h, line);
	}
	if (h == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	req->headers = h;
}

/*
 * Stop the transfer if it still runs, wipe the header list (one of its
 * lines may hold a key) and free the request's curl resources.
 */
void
provider_request_free(HttpRequest *req)
{
	http_abort(req);
	for (struct curl_slist *h = req->headers; h; h = h->next)
		explicit_bzero(h->data, strlen(h->data));
	curl_slist_free_all(req->headers);
	req->headers = NULL;
	http_request_cleanup(req);
}

/*
 * One vocabulary of finish reasons over the providers': stop, length,
 * tool_calls, content_filter, refusal, other (the raw value is kept in the
 * ledger).  NULL stays NULL: the provider said nothing.
 */
static char *
normalize_finish_reason(const char *raw)
{
	static const char *const map[][2] = {
		{"stop", "stop"}, {"end_turn", "stop"}, {"stop_sequence", "stop"},
		{"length", "length"}, {"max_tokens", "length"},
		{"model_context_window_exceeded", "length"},
		{"tool_calls", "tool_calls"}, {"function_call", "tool_calls"},
		{"tool_use", "tool_calls"},
		{"content_filter", "content_filter"},
		{"refusal", "refusal"},
	};

	if (raw == NULL)
		return NULL;
	for (int i = 0; i < lengthof(map); i++)
		if (strcmp(raw, map[i][0]) == 0)
			return pstrdup(map[i][1]);
	return pstrdup("other");
}

/*
 * A structured answer (response_format json_schema or json_object): the
 * content must be JSON; its parsed value is out->parsed.  Not JSON is not
 * a protocol failure -- the model wrote it, and was billed for it -- so
 * parsed stays NULL and the evaluation's json_schema check fails it.
 */
static void
parse_structured(const GenRequest *req, GenResponse *out)
{
	char	   *problem = NULL;

	if (req == NULL || (!req->json_format && req->schema == NULL) ||
		out->content == NULL || out->refusal != NULL)
		return;
	out->parsed = json_parse_any(out->content, &problem);
}

/* Parse a successful answer with the kind's parser; false with *problem */
static bool
parse_response(const ProviderOps *ops, const GenRequest *req, const char *body,
			   GenResponse *out, char **problem)
{
	Jsonb	   *jb;
	bool		ok;

	/* embeddings: millions of numbers, read by a parser of their own */
	if (req && req->embedding)
		return ops->parse_embed_response(body, req, out, problem);
	jb = json_parse_object(body, problem);
	if (jb == NULL)
		return false;
	ok = ops->parse_response(jb, req, out, problem);
	if (ok)
		parse_structured(req, out);
	if (out->raw_finish_reason == NULL)
		out->raw_finish_reason = out->finish_reason;
	out->finish_reason = normalize_finish_reason(out->finish_reason);

	/*
	 * Usage that cannot be true is no usage (the tokens are then estimated
	 * and marked so): a negative count would price the call below nothing.
	 * Cache reads and writes are part of the prompt: more of them than the
	 * prompt has is cut to the prompt (test/fuzz found cached_tokens above
	 * prompt_tokens accepted, and priced negative).
	 */
	if (out->usage_present)
	{
		if (out->input_tokens < 0 || out->output_tokens < 0 ||
			out->cached_input_tokens < 0 || out->cache_write_tokens < 0)
		{
			out->usage_present = false;
			out->input_tokens = out->output_tokens = 0;
			out->cached_input_tokens = out->cache_write_tokens = 0;
			out->cache_write_1h_tokens = out->reasoning_tokens = 0;
		}
		else
		{
			/* details are parts of their whole, never more */
			out->reasoning_tokens = Max(Min(out->reasoning_tokens, out->output_tokens), 0);
			out->cache_write_tokens = Min(out->cache_write_tokens, out->input_tokens);
			out->cache_write_1h_tokens = Max(Min(out->cache_write_1h_tokens,
												 out->cache_write_tokens), 0);
			out->cached_input_tokens = Min(out->cached_input_tokens,
										   out->input_tokens - out->cache_write_tokens);
		}
	}
	return ok;
}

/* Fill `f` for an HTTP status that is not a success */
static void
classify_status(long status, Failure *f)
{
	f->sqlstate = ERRCODE_MAESTER_PROVIDER_ERROR;
	f->counts = false;
	f->retryable = false;
	switch (status)
	{
		case 408:
			f->error_class = "request_timeout";
			f->sqlstate = ERRCODE_MAESTER_TIMEOUT;
			f->retryable = f->counts = true;
			break;
		case 409:
			f->error_class = "conflict";
			f->retryable = true;
			break;
		case 429:
			f->error_class = "rate_limited";
			f->retryable = f->counts = true;
			break;
		case 500:
		case 502:
		case 503:
		case 504:
			f->error_class = "server_error";
			f->retryable = f->counts = true;
			break;
		case 529:
			f->error_class = "overloaded";
			f->retryable = f->counts = true;
			break;
		case 401:
		case 403:
			f->error_class = "auth";
			break;
		case 404:
			f->error_class = "not_found";
			break;
		default:
			if (status >= 300 && status < 400)
			{
				f->error_class = "redirect";
				f->sqlstate = ERRCODE_MAESTER_BAD_RESPONSE;
			}
			else if (status >= 500)
			{
				f->error_class = "server_error";
				f->retryable = f->counts = true;
			}
			else
				f->error_class = "bad_request";
	}
}

/*
 * Is a 429's body OpenAI's "insufficient_quota" (error.code or error.type)?
 * The SDKs retry every 429; that one only comes back when someone pays.
 */
static bool
quota_exhausted(const char *body)
{
	char	   *problem = NULL;
	Jsonb	   *jb;
	JsonbContainer *error;
	char	   *v;

	if (body == NULL || strstr(body, "insufficient_quota") == NULL)
		return false;
	jb = json_parse_object(body, &problem);
	if (jb == NULL || (error = json_get_container(&jb->root, "error")) == NULL)
		return false;
	v = json_get_string(error, "code");
	if (v && strcmp(v, "insufficient_quota") == 0)
		return true;
	v = json_get_string(error, "type");
	return v && strcmp(v, "insufficient_quota") == 0;
}

/*
 * How a finished attempt ended: true with `out` filled on success; false
 * with `f` filled otherwise.  `key` (may be NULL) is masked in the error
 * summaries of provider bodies.
 */
bool
provider_outcome(const ProviderConf *p, const GenRequest *gen, HttpRequest *req,
				 const char *key, GenResponse *out, Failure *f)
{
	memset(f, 0, sizeof(*f));
	f->retry_after_ms = -1;
	memset(out, 0, sizeof(*out));	/* nothing of an earlier attempt */
	out->provider_request_id = req->request_id[0] ? pstrdup(req->request_id) : NULL;
	switch (req->outcome)
	{
		case HTTP_OK:
			if (req->status >= 200 && req->status < 300)
			{
				char	   *problem = NULL;

				if (req->content_type[0] != '\0' &&
					strstr(req->content_type, "json") == NULL)
				{
					f->error_class = "bad_response";
					f->sqlstate = ERRCODE_MAESTER_BAD_RESPONSE;
					f->counts = true;
					f->message = psprintf("%s answered with content type \"%s\", not JSON",
										  p->name, req->content_type);
				}
				else if (!pg_verify_mbstr(PG_UTF8, req->response, req->response_len, true))
				{
					f->error_class = "bad_response";
					f->sqlstate = ERRCODE_MAESTER_BAD_RESPONSE;
					f->counts = true;
					f->message = psprintf("%s answered with text that is not valid UTF-8",
										  p->name);
				}
				else if (parse_response(p->ops, gen,
										pg_any_to_server(req->response,
														 req->response_len,
														 PG_UTF8),
										out, &problem))
					return true;
				else
				{
					f->error_class = "bad_response";
					f->sqlstate = ERRCODE_MAESTER_BAD_RESPONSE;
					f->counts = true;
					f->http_status = (int) req->status;
					f->message = psprintf("%s: %s", p->name, problem);
					if (out->usage_present)
					{
						/*
						 * Billed (it reports usage): charged as reported, and
						 * the call stops here, for another target would be
						 * billed too.
						 */
						f->billed = true;
						f->fatal = true;
						f->detail = psprintf("The answer was billed: %lld input and %lld output tokens, recorded in the ledger.",
											 (long long) out->input_tokens,
											 (long long) out->output_tokens);
					}
				}
			}
			else
			{
				classify_status(req->status, f);
				f->http_status = (int) req->status;
				f->retry_after_ms = req->retry_after_ms;
				if (req->status == 429 && quota_exhausted(req->response))
				{
					/* no retry brings quota back: go on to the next target */
					f->error_class = "quota";
					f->retryable = false;
					f->retry_after_ms = -1;
				}
				/* the provider's own word on retrying, as the SDKs take it */
				if (req->should_retry >= 0)
					f->retryable = req->should_retry == 1;
				if (strcmp(f->error_class, "redirect") == 0)
					f->message = psprintf("%s answered HTTP %ld, a redirect, which is not followed",
										  p->name, req->status);
				else
					f->message = psprintf("%s answered HTTP %ld: %s", p->name, req->status,
										  provider_error_summary(req->response,
																 req->response_len, key));
			}
			break;
		case HTTP_TIMEOUT:
			f->error_class = "timeout";
			f->sqlstate = ERRCODE_MAESTER_TIMEOUT;
			f->retryable = f->counts = true;
			f->message = psprintf("%s did not answer in time", p->name);
			break;
		case HTTP_CONNECT_FAILED:
		case HTTP_NETWORK_ERROR:
			f->error_class = req->outcome == HTTP_CONNECT_FAILED ? "connection" : "network";
			f->sqlstate = ERRCODE_MAESTER_UNREACHABLE;
			f->retryable = f->counts = true;
			f->message = psprintf("%s: %s", p->name, req->error);
			break;
		case HTTP_TOO_LARGE:
			f->error_class = "too_large";
			f->sqlstate = ERRCODE_MAESTER_BAD_RESPONSE;
			f->message = psprintf("%s: %s", p->name, req->error);
			break;
		case HTTP_EGRESS_DENIED:
			/* nothing left: the connection was refused before it opened */
			f->error_class = "egress_denied";
			f->sqlstate = ERRCODE_INSUFFICIENT_PRIVILEGE;
			f->fatal = true;
			f->message = psprintf("egress to provider \"%s\" refused", p->name);
			f->detail = psprintf("Its host resolved to %s, a private or loopback address.",
								 req->egress_reason);
			f->hint = "A superuser can allow a local server by listing its host in maester.allow_insecure_hosts.";
			break;
		case HTTP_INTERNAL_ERROR:
			f->error_class = "internal";
			f->sqlstate = ERRCODE_MAESTER_UNREACHABLE;
			f->message = psprintf("%s: %s", p->name, req->error);
			break;
	}
	return false;
}

/*
 * Key masking.  A provider, or a proxy in front of it, may echo what it
 * was sent in an error body: the key, a part of it, or an encoding of it
 * (the Authorization header base64'd inside a Basic credential or a log
 * line, the key percent-encoded in a URL).  So the summary masks every run
 * of at least MASK_RUN bytes that is also a run of the key or of one of its
 * encodings: a key cut by one character, its prefix or its suffix are
 * masked, not only the whole key.
 *
 * MASK_RUN is 8: fewer than 8 characters of a key (at most some 48 bits of
 * a key of 128 bits or more) do not help anyone guess the rest, while
 * shorter runs -- sk-, a 5-character fragment -- occur in ordinary text and
 * would blank it; and 8 bytes are one uint64, so that each position of the
 * text costs one binary search over the key's runs, whatever the key.  A
 * server that cuts the key into pieces of fewer than 8 characters on
 * purpose is not an echo but an attacker that has the key anyway.
 *
 * The encodings: base64, standard and URL-safe (without padding), of the
 * key at each of the three alignments a longer text can put it at (the
 * 4-character groups that mix in bytes before or after the key are left
 * out); percent-encoding of the bytes outside RFC 3986's unreserved set,
 * and of every byte, each with upper- and lower-case hex digits.
 */
#define MASK_RUN 8

/* The runs of `k` bytes of a key and its encodings, sorted, as integers */
typedef struct KeyRuns
{
	int			k;				/* run length: MASK_RUN, or the key's if shorter */
	int			n;
	int			size;
	uint64	   *runs;
} KeyRuns;

/* The `k` bytes at `s` as an integer (zero-filled) */
static inline uint64
run_at(const char *s, int k)
{
	uint64		v = 0;

	memcpy(&v, s, k);
	return v;
}

/* Add every run of `form` (len bytes) */
static void
key_runs_add(KeyRuns *r, const char *form, int len)
{
	for (int i = 0; i + r->k <= len; i++)
	{
		if (r->n == r->size)
		{
			r->size *= 2;
			r->runs = repalloc(r->runs, sizeof(uint64) * r->size);
		}
		r->runs[r->n++] = run_at(form + i, r->k);
	}
}

/* Add the base64 forms of `key`: standard and URL-safe, at offsets 0, 1, 2 */
static void
key_runs_add_base64(KeyRuns *r, const char *key, int len)
{
	for (int a = 0; a < 3; a++)
	{
		char	   *src = palloc0(a + len);
		int			cap = pg_b64_enc_len(a + len) + 1;
		char	   *enc = palloc(cap);
		int			n;
		int			start = a > 0 ? 4 : 0;	/* the group holding the bytes before */
		int			end;

		memcpy(src + a, key, len);
		n = pg_b64_encode(src, a + len, enc, cap);
		if (n < 0)
			elog(ERROR, "could not base64-encode a key");
		/* the last group holds padding, or bytes after the key in a longer text */
		end = (a + len) % 3 != 0 ? n - 4 : n;
		if (end > start)
		{
			key_runs_add(r, enc + start, end - start);
			for (int i = start; i < end; i++)
				enc[i] = enc[i] == '+' ? '-' : enc[i] == '/' ? '_' : enc[i];
			key_runs_add(r, enc + start, end - start);
		}
		pfree(src);
		pfree(enc);
	}
}

/* Add the percent-encoded forms of `key` (see above) */
static void
key_runs_add_percent(KeyRuns *r, const char *key, int len)
{
	static const char *const digits[] = {"0123456789ABCDEF", "0123456789abcdef"};
	char	   *enc = palloc(len * 3);

	for (int all = 0; all < 2; all++)
		for (int d = 0; d < 2; d++)
		{
			int			n = 0;

			for (int i = 0; i < len; i++)
			{
				unsigned char c = (unsigned char) key[i];

				if (!all && ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
							 (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~'))
					enc[n++] = c;
				else
				{
					enc[n++] = '%';
					enc[n++] = digits[d][c >> 4];
					enc[n++] = digits[d][c & 15];
				}
			}
			key_runs_add(r, enc, n);
		}
	pfree(enc);
}

static int
uint64_cmp(const void *a, const void *b)
{
	uint64		x = *(const uint64 *) a;
	uint64		y = *(const uint64 *) b;

	return x < y ? -1 : x > y;
}

/*
 * Mask (by '*', in place) every run of the first `len` bytes of `s` that is
 * also a run of MASK_RUN bytes of `key` or of one of its encodings (see
 * above); keys of fewer than 4 bytes are not masked, shorter keys than
 * MASK_RUN only whole.  Linear in `len`, times a binary search.
 */
static void
mask_key_runs(char *s, int len, const char *key)
{
	KeyRuns		r;
	int			klen;
	int			until = 0;

	if (key == NULL || (klen = strlen(key)) < 4)
		return;
	r.k = Min(MASK_RUN, klen);
	r.n = 0;
	r.size = 16 * klen;
	r.runs = palloc(sizeof(uint64) * r.size);
	key_runs_add(&r, key, klen);
	key_runs_add_base64(&r, key, klen);
	key_runs_add_percent(&r, key, klen);
	qsort(r.runs, r.n, sizeof(uint64), uint64_cmp);

	for (int i = 0; i < len; i++)
	{
		if (i + r.k <= len)
		{
			uint64		v = run_at(s + i, r.k);

			if (bsearch(&v, r.runs, r.n, sizeof(uint64), uint64_cmp) != NULL)
				until = i + r.k;
		}
		/* s[i] is not read again: the runs still to look at start after it */
		if (i < until)
			s[i] = '*';
	}
	explicit_bzero(r.runs, sizeof(uint64) * r.size);
	pfree(r.runs);
}

/*
 * Mask the value after every "authorization:" and "x-api-key:" in `s`
 * (case-insensitive; after "Bearer " for the former), whatever key it is.
 */
static void
redact_headers(char *s)
{
	static const char *const names[] = {"authorization:", "x-api-key:"};

	for (int n = 0; n < lengthof(names); n++)
	{
		size_t		nlen = strlen(names[n]);

		for (char *p = s; *p; p++)
		{
			if (pg_strncasecmp(p, names[n], nlen) != 0)
				continue;
			p += nlen;
			while (*p == ' ' || *p == '\t')
				p++;
			if (pg_strncasecmp(p, "bearer ", 7) == 0)
				p += 7;
			while (*p && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' &&
				   *p != '"' && *p != ',')
				*p++ = '*';
			if (*p == '\0')
				break;
		}
	}
}

/*
 * A short, printable summary of a provider's error body for errdetail: the
 * error message when the body is a provider-shaped JSON error (OpenAI
 * {"error": {"message"}}, Anthropic {"error": {"type", "message"}}),
 * otherwise the body; cut to SUMMARY_MAX bytes.  Control characters become
 * blanks.  Before cutting, `secret` (the API key in use) is masked
 * wherever it or a long enough part of it appears, plain or encoded (see
 * mask_key_runs), and so is any value after "authorization:" or
 * "x-api-key:", in case a server echoes request headers back.
 */
#define SUMMARY_MAX 300

char *
provider_error_summary(const char *body, size_t len, const char *secret)
{
	char	   *problem = NULL;
	char	   *msg = NULL;
	size_t		msglen;
	StringInfoData s;

	if (body == NULL || len == 0)
		return pstrdup("(empty body)");
	if (body[0] == '{')
	{
		Jsonb	   *jb = json_parse_object(body, &problem);

		if (jb)
		{
			JsonbContainer *err = json_get_container(&jb->root, "error");

			if (err)
			{
				char	   *type = json_get_string(err, "type");

				msg = json_get_string(err, "message");
				if (msg && type)
					msg = psprintf("%s: %s", type, msg);
			}
			else
				msg = json_get_string(&jb->root, "message");
		}
	}
	if (msg == NULL)
		msg = pnstrdup(body, len);

	/*
	 * Mask keys first, then cut the text short.  Only the runs that start in
	 * the part kept can show in it, so the key's runs are looked for there
	 * (and MASK_RUN - 1 bytes further, where those runs end), not in a body
	 * of megabytes.
	 */
	msglen = strlen(msg);
	mask_key_runs(msg, Min(msglen, SUMMARY_MAX + MASK_RUN - 1), secret);
	redact_headers(msg);

	initStringInfo(&s);
	for (const char *p = msg; *p && s.len < SUMMARY_MAX; p++)
		appendStringInfoChar(&s, ((unsigned char) *p < ' ') ? ' ' : *p);
	if (msglen > SUMMARY_MAX)
		appendStringInfoString(&s, "...");
	/* a body in another encoding, or cut inside a character: keep ASCII */
	if (!pg_verifymbstr(s.data, s.len, true))
		for (char *p = s.data; *p; p++)
			if ((unsigned char) *p >= 0x80)
				*p = '?';
	return s.data;
}

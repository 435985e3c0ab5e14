/*-------------------------------------------------------------------------
 *
 * trace.c
 *	  Every call a trace; its steps spans, written by the ledger worker.
 *
 * A call's trace id is the application's (from a W3C traceparent set in
 * maester.traceparent, so that the call's spans become children of the
 * application's span) or a new random one.  The spans -- llm_generate (the
 * root), prompt_render, model_route, budget_check, model_generate (one per
 * attempt), cost_metering, evaluation -- carry OpenTelemetry GenAI
 * attribute names.  A grading call (an llm_rubric check) is a trace of its
 * own spans under the graded call's evaluation span, its root named
 * llm_rubric.  Spans are collected in the backend and handed to the span
 * writer when the call ends, so they survive the caller's rollback like
 * the ledger does; they are not waited for (no money depends on them), so
 * a crash within milliseconds of a call may lose its spans, never its
 * ledger rows.
 *
 * maester.trace_sample_rate samples whole traces (spans), never ledger
 * rows.  The model_generate span's id travels to the provider in a
 * traceparent header.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "common/jsonapi.h"
#include "access/xact.h"
#include "common/pg_prng.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/timestamp.h"

#include "ledger.h"
#include "settings.h"
#include "trace.h"

/* `bytes` random bytes as lowercase hex into out[2 * bytes + 1] (ids) */
void
trace_random_hex(char *out, int bytes)
{
	uint8		b[16];

	if (!pg_strong_random(b, bytes))
		ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("could not generate random values")));
	hex_encode((char *) b, bytes, out);
	out[bytes * 2] = '\0';
}

static bool
is_lower_hex(const char *s, int n)
{
	bool		nonzero = false;

	for (int i = 0; i < n; i++)
	{
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
		nonzero |= s[i] != '0';
	}
	return nonzero;
}

/*
 * Parse a W3C traceparent ("00-<32 hex>-<16 hex>-<2 hex>"); false when it
 * is not valid (all-zero ids and version ff are invalid, as the spec says).
 */
static bool
parse_traceparent(const char *tp, char *trace_id, char *parent_id, bool *sampled)
{
	if (strlen(tp) < 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-')
		return false;
	if (!is_lower_hex(tp, 2) && strncmp(tp, "00", 2) != 0)
		return false;
	if (strncmp(tp, "ff", 2) == 0 || (strncmp(tp, "00", 2) == 0 && strlen(tp) != 55))
		return false;
	if (!is_lower_hex(tp + 3, 32) || !is_lower_hex(tp + 36, 16))
		return false;
	if (!((tp[53] >= '0' && tp[53] <= '9') || (tp[53] >= 'a' && tp[53] <= 'f')) ||
		!((tp[54] >= '0' && tp[54] <= '9') || (tp[54] >= 'a' && tp[54] <= 'f')))
		return false;
	memcpy(trace_id, tp + 3, 32);
	trace_id[32] = '\0';
	memcpy(parent_id, tp + 36, 16);
	parent_id[16] = '\0';
	*sampled = (strtol(tp + 53, NULL, 16) & 1) != 0;
	return true;
}

/*
 * Start a call's trace: ids, sampling, and the root span, named
 * `root_name`.  With `parent`, the call is a step of another call (a
 * grading call): same trace, same sampling, its root a child of `under`;
 * else the application's maester.traceparent, if valid, is the parent.
 */
void
trace_begin(CallTrace *t, const char *root_name, const CallTrace *parent,
			const Span *under)
{
	memset(t, 0, sizeof(*t));
	if (parent != NULL)
	{
		strlcpy(t->trace_id, parent->trace_id, sizeof(t->trace_id));
		strlcpy(t->app_parent, under ? under->span_id : parent->root_id, sizeof(t->app_parent));
		t->app_sampled = parent->sampled;
		trace_random_hex(t->root_id, 8);
		t->sampled = parent->sampled;
	}
	else
	{
		if (maester_traceparent && maester_traceparent[0] != '\0')
		{
			if (!parse_traceparent(maester_traceparent, t->trace_id, t->app_parent, &t->app_sampled))
			{
				ereport(WARNING,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("maester.traceparent \"%s\" is not a valid W3C traceparent; it is ignored",
								maester_traceparent),
						 errhint("The form is 00-<32 hex digits>-<16 hex digits>-<2 hex digits>.")));
				t->app_parent[0] = '\0';
			}
		}
		if (t->app_parent[0] == '\0')
			trace_random_hex(t->trace_id, 16);
		trace_random_hex(t->root_id, 8);
		t->sampled = maester_trace_sample_rate >= 1.0 ||
			(maester_trace_sample_rate > 0 && pg_prng_double(&pg_global_prng_state) < maester_trace_sample_rate);
	}
	/* the root span */
	(void) trace_span_start(t, root_name);
	strlcpy(t->spans[0].span_id, t->root_id, sizeof(t->spans[0].span_id));
	strlcpy(t->spans[0].parent_id, t->app_parent, sizeof(t->spans[0].parent_id));
}

Span *
trace_span_start(CallTrace *t, const char *name)
{
	Span	   *s;

	if (t->nspans >= TRACE_MAX_SPANS)
		s = &t->spans[TRACE_MAX_SPANS - 1];	/* overwrite the last: bounded */
	else
		s = &t->spans[t->nspans++];
	memset(s, 0, sizeof(*s));
	s->name = name;
	trace_random_hex(s->span_id, 8);
	strlcpy(s->parent_id, t->root_id, sizeof(s->parent_id));
	s->start = GetCurrentTimestamp();
	s->duration_us = -1;
	s->status = "ok";
	initStringInfo(&s->attrs);
	return s;
}

void
trace_span_end(Span *s, const char *status)
{
	s->duration_us = GetCurrentTimestamp() - s->start;
	if (status)
		s->status = status;
}

static void
attr_key(Span *s, const char *key)
{
	if (s->attrs.len)
		appendStringInfoString(&s->attrs, ", ");
	escape_json(&s->attrs, key);
	appendStringInfoString(&s->attrs, ": ");
}

void
trace_attr_str(Span *s, const char *key, const char *value)
{
	if (value == NULL)
		return;
	attr_key(s, key);
	escape_json(&s->attrs, value);
}

void
trace_attr_num(Span *s, const char *key, double value)
{
	if (isnan(value) || isinf(value))
		return;
	attr_key(s, key);
	if (value == (double) (int64) value)
		appendStringInfo(&s->attrs, INT64_FORMAT, (int64) value);
	else
		appendStringInfo(&s->attrs, "%.17g", value);
}

/* A member whose value is already JSON text */
void
trace_attr_raw(Span *s, const char *key, const char *json)
{
	if (json == NULL)
		return;
	attr_key(s, key);
	appendStringInfoString(&s->attrs, json);
}

/* The traceparent header value for a request made within span `s` */
char *
trace_traceparent_header(CallTrace *t, Span *s)
{
	return psprintf("00-%s-%s-%s", t->trace_id, s->span_id, t->sampled ? "01" : "00");
}

/*
 * Hand the trace to the span writer: the root span is closed with
 * `status`; nothing is written when the trace is not sampled.  Never
 * throws once it starts queueing (a full queue drops the spans).
 */
static void trace_enqueue(CallTrace *t, LedgerSlot *slot, const char *tenant,
						  const pg_uuid_t *request_id);

void
trace_flush(CallTrace *t, const char *status, const char *tenant, const pg_uuid_t *request_id)
{
	if (!t->sampled || t->nspans == 0)
		return;
	trace_span_end(&t->spans[0], status);
	trace_enqueue(t, ledger_attach(), tenant, request_id);
	t->nspans = 0;
}

/*
 * On an error path: queue the spans if this database's ledger is attached
 * and serving, without waiting (the root span says error).  Only running
 * out of memory could throw here.
 */
void
trace_flush_nothrow(CallTrace *t, const char *tenant, const pg_uuid_t *request_id)
{
	LedgerSlot *slot;

	if (t == NULL || !t->sampled || t->nspans == 0)
		return;
	slot = ledger_slot_if_ready();
	if (slot == NULL)
		return;
	trace_span_end(&t->spans[0], "error");
	trace_enqueue(t, slot, tenant, request_id);
	t->nspans = 0;
}

/* A span as a SpanRecord (palloc'd); `extra` is more JSON members, or NULL */
static SpanRecord *
span_record(CallTrace *t, Span *s, const char *tenant, const pg_uuid_t *request_id,
			const char *extra)
{
	StringInfoData attrs;
	SpanRecord *r;

	initStringInfo(&attrs);
	appendStringInfoChar(&attrs, '{');
	appendBinaryStringInfo(&attrs, s->attrs.data, s->attrs.len);
	if (extra)
		appendStringInfo(&attrs, "%s%s", s->attrs.len ? ", " : "", extra);
	appendStringInfoChar(&attrs, '}');
	if (attrs.len > TRACE_MAX_ATTRS)
	{
		resetStringInfo(&attrs);
		appendStringInfoString(&attrs, "{\"maester.attributes_truncated\": true}");
	}
	/* one record the writer cannot insert would lose its whole batch */
	if (pg_parse_json(makeJsonLexContextCstringLen(attrs.data, attrs.len,
												   GetDatabaseEncoding(), false),
					  &nullSemAction) != JSON_SUCCESS)
	{
		resetStringInfo(&attrs);
		appendStringInfoString(&attrs, "{}");
	}
	r = palloc0(SPAN_RECORD_SIZE(attrs.len));
	r->len = SPAN_RECORD_SIZE(attrs.len);
	if (s->duration_us < 0)
		trace_span_end(s, "error");
	strlcpy(r->trace_id, t->trace_id, sizeof(r->trace_id));
	strlcpy(r->span_id, s->span_id, sizeof(r->span_id));
	strlcpy(r->parent_span_id, s->parent_id, sizeof(r->parent_span_id));
	strlcpy(r->name, s->name, sizeof(r->name));
	strlcpy(r->status, s->status, sizeof(r->status));
	ledger_copy_name(r->tenant, tenant, sizeof(r->tenant));
	r->ts = s->start;
	r->duration_us = s->duration_us;
	memcpy(r->attrs, attrs.data, attrs.len + 1);
	if (request_id)
	{
		r->request_id = *request_id;
		r->has_request_id = true;
	}
	return r;
}

/* the statement we last warned about dropped spans in */
static TimestampTz WarnedStatement = 0;

/*
 * Queue the trace's spans for the resident worker.  When the span queue
 * has no room for all of them, the root says how many were dropped
 * (maester.spans_dropped: explain() marks the trace partial), and the
 * caller is warned, once per statement.
 */
static void
trace_enqueue(CallTrace *t, LedgerSlot *slot, const char *tenant,
			  const pg_uuid_t *request_id)
{
	SpanRecord **recs = palloc(sizeof(SpanRecord *) * t->nspans);
	int			room;
	int			queued;

	for (int i = 0; i < t->nspans; i++)
		recs[i] = span_record(t, &t->spans[i], tenant, i == 0 ? request_id : NULL, NULL);
	room = span_room(slot, recs, t->nspans);
	if (room < t->nspans && room > 0)
		recs[0] = span_record(t, &t->spans[0], tenant, request_id,
							  psprintf("\"maester.spans_dropped\": %d", t->nspans - room));
	queued = span_enqueue(slot, recs, t->nspans);
	if (queued < t->nspans && GetCurrentStatementStartTimestamp() != WarnedStatement)
	{
		WarnedStatement = GetCurrentStatementStartTimestamp();
		ereport(WARNING,
				(errmsg("the span queue of this database is full: %d of %d spans of a call were dropped",
						t->nspans - queued, t->nspans),
				 errdetail("The call itself and its ledger rows are not affected; this warning is given once per statement."),
				 errhint("Raise maester.span_queue_size, or lower maester.trace_sample_rate.")));
	}
	for (int i = 0; i < t->nspans; i++)
		pfree(recs[i]);
	pfree(recs);
}

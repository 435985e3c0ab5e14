/*-------------------------------------------------------------------------
 *
 * trace.h
 *	  Traces and spans of model calls.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_TRACE_H
#define MAESTER_TRACE_H

#include "lib/stringinfo.h"
#include "datatype/timestamp.h"
#include "utils/uuid.h"

#define TRACE_MAX_SPANS 32
#define TRACE_MAX_ATTRS 1024		/* bytes of a span's attributes (JSON) */

typedef struct Span
{
	const char *name;
	char		span_id[17];
	char		parent_id[17];
	TimestampTz start;
	int64		duration_us;	/* -1: still open */
	const char *status;			/* ok, error */
	StringInfoData attrs;		/* "key": value, ... (JSON members) */
} Span;

typedef struct CallTrace
{
	bool		sampled;
	char		trace_id[33];
	char		root_id[17];
	char		app_parent[17]; /* the application's span, "" if none */
	bool		app_sampled;
	int			nspans;
	Span		spans[TRACE_MAX_SPANS];
} CallTrace;

extern void trace_random_hex(char *out, int bytes);
extern void trace_begin(CallTrace *t, const char *root_name,
						const CallTrace *parent, const Span *under);
extern Span *trace_span_start(CallTrace *t, const char *name);
extern void trace_span_end(Span *s, const char *status);
extern void trace_attr_str(Span *s, const char *key, const char *value);
extern void trace_attr_num(Span *s, const char *key, double value);
extern void trace_attr_raw(Span *s, const char *key, const char *json);
extern char *trace_traceparent_header(CallTrace *t, Span *s);
extern void trace_flush(CallTrace *t, const char *status, const char *tenant,
						const pg_uuid_t *request_id);
extern void trace_flush_nothrow(CallTrace *t, const char *tenant,
								const pg_uuid_t *request_id);

#endif							/* MAESTER_TRACE_H */

/*-------------------------------------------------------------------------
 *
 * ledger.h
 *	  The usage ledger: records handed from backends to the per-database
 *	  ledger worker through shared memory, and written durably by it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_LEDGER_H
#define MAESTER_LEDGER_H

#include "datatype/timestamp.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "utils/uuid.h"

#include "settings.h"

#define LEDGER_NAMELEN 256		/* bytes kept of prompt/model names */

typedef enum LedgerKind
{
	LEDGER_PENDING,				/* an attempt is about to be sent */
	LEDGER_SETTLE,				/* how it ended */
	LEDGER_SPAN					/* a span of a call's trace */
} LedgerKind;

/*
 * One ledger record.  Fixed size, so that it can live in the shared ring;
 * strings are NUL-terminated and cut at a character boundary; numerics are
 * their text ("" = NULL).
 */
typedef struct LedgerRecord
{
	uint64		seq;			/* assigned when queued */
	LedgerKind	kind;
	int			procno;			/* the backend to wake when it is durable */
	int			backend_pid;
	int64		epoch;			/* shared memory generation (server start) */
	pg_uuid_t	request_id;
	int32		attempt;
	TimestampTz ts;				/* when the attempt started */
	TimestampTz settled_at;
	char		tenant[NAMEDATALEN];
	char		role[NAMEDATALEN];
	char		trace_id[33];
	char		prompt_hash[65];
	char		prompt_name[LEDGER_NAMELEN];
	char		prompt_version[LEDGER_NAMELEN];
	char		provider[128];
	char		requested_model[LEDGER_NAMELEN];
	char		model[LEDGER_NAMELEN];
	char		status[16];
	char		error_class[32];
	char		purpose[16];
	char		cost[48];
	char		estimate[48];
	bool		has_usage;
	bool		usage_estimated;
	bool		priced;
	bool		fallback_used;
	int64		input_tokens;
	int64		output_tokens;
	int64		cached_input_tokens;
	int64		cache_write_tokens;
	int32		http_status;
	int32		max_tokens;		/* output tokens reserved by the estimate */
	double		latency_ms;
	char		tags[512];		/* options.tags as JSON text, "" = none */
	char		eval_status[8];	/* pass, fail, error; "" = none */
	double		eval_score;
	/* spans */
	char		span_id[17];
	char		parent_span_id[17];
	char		span_name[32];
	int64		duration_us;
	bool		has_request_id;
	char		attrs[1024];	/* JSON object */
} LedgerRecord;

/*
 * The queue of one database.  Protected by `lock`.  Records in
 * [tail, head) wait to be written; the worker advances tail and
 * durable_seq after its commit.
 */
typedef struct LedgerSlot
{
	LWLock	   *lock;
	Oid			dboid;			/* InvalidOid: free */
	pid_t		worker_pid;		/* 0: no worker */
	Latch	   *worker_latch;
	bool		ready;			/* the worker has recovered and serves */
	uint64		next_seq;
	uint64		durable_seq;
	uint64		head;
	uint64		tail;
	int64		written;		/* records written since server start */
	/* the span ring: [span_tail, span_head), written by the span writer */
	uint64		span_head;
	uint64		span_tail;
	pid_t		span_pid;		/* 0: no span writer */
	Latch	   *span_latch;
	int64		spans_dropped;	/* spans not queued: the span ring was full */
	pid_t		exporter_pid;	/* 0: no OTLP exporter */
	int64		otlp_exported;	/* spans sent to the collector */
	int64		otlp_dropped;	/* spans given up on */
	int64		otlp_failed_posts;
	/* job workers: woken (and job_wakeups bumped) when jobs are submitted */
	pid_t		job_pid[MAESTER_MAX_JOB_WORKERS];
	Latch	   *job_latch[MAESTER_MAX_JOB_WORKERS];
	uint64		job_wakeups;
	/* the rings follow: ledger_queue_size records each, ledger then spans */
} LedgerSlot;

typedef struct LedgerShared
{
	int64		epoch;			/* new at every shared memory init */
	Latch	   *launcher_latch;
	pid_t		launcher_pid;
	int			nslots;
	int			queue_size;
	Size		slot_size;
	char		slots[FLEXIBLE_ARRAY_MEMBER];
} LedgerShared;

/* the span writer's nap: spans appear in maester.span within about this */
#define SPAN_NAP_MS 100

extern LedgerShared *ledger_shared;

extern Size ledger_shmem_size(void);
extern void ledger_shmem_init(void);
extern LedgerSlot *ledger_slot(int i);
extern LedgerRecord *ledger_ring(LedgerSlot *slot);
extern LedgerRecord *span_ring(LedgerSlot *slot);

/* backends */
extern LedgerSlot *ledger_attach(void);
extern LedgerSlot *ledger_slot_if_ready(void);
extern uint64 ledger_enqueue(LedgerSlot *slot, LedgerRecord *rec);
extern bool ledger_try_enqueue(LedgerSlot *slot, LedgerRecord *rec);
extern int	span_enqueue(LedgerSlot *slot, LedgerRecord *recs, int n);
extern bool ledger_wait_durable(LedgerSlot *slot, uint64 seq, bool must);
extern uint64 ledger_durable_seq(LedgerSlot *slot);
extern void ledger_copy_name(char *dst, const char *src, int size);

#endif							/* MAESTER_LEDGER_H */

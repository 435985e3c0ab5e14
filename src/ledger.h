/*-------------------------------------------------------------------------
 *
 * ledger.h
 *	  The per-database slots in shared memory: the usage ledger's queue,
 *	  the spans' queue, and what the database's workers share with its
 *	  backends and with the launcher.
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

#define LEDGER_DEAD_KEPT 64		/* dead PENDING records a caller can ask about */
#define LEDGER_NAMELEN 256		/* bytes kept of prompt/model names */

typedef enum LedgerKind
{
	LEDGER_PENDING,				/* an attempt is about to be sent */
	LEDGER_SETTLE				/* how it ended */
} LedgerKind;

/*
 * One ledger record.  Fixed size, so that it can live in the shared ring;
 * strings are NUL-terminated and cut at a character boundary; numerics are
 * their text ("" = NULL).
 */
typedef struct LedgerRecord
{
	uint64		seq;			/* assigned when queued */
	uint64		lsn;			/* the end of its WAL message, made durable by
								 * its backend (walledger.c); 0: none, the
								 * worker's commit makes it durable */
	uint32		layout;			/* LEDGER_RECORD_LAYOUT, for WAL replay */
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
	char		model_name[LEDGER_NAMELEN];	/* the model's identity (router.c) */
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
	int64		cache_write_1h_tokens;
	int64		reasoning_tokens;
	char		service_tier[16];	/* "" = not said */
	int32		http_status;
	int32		max_tokens;		/* output tokens reserved by the estimate */
	double		latency_ms;
	char		tags[512];		/* options.tags as JSON text, "" = none */
	char		eval_status[8];	/* pass, fail, error; "" = none */
	char		finish_reason[16];	/* normalized; "" = none */
	char		provider_finish_reason[48];	/* as the provider said it */
	char		provider_request_id[128];	/* its request id header */
	double		eval_score;
	char		route_strategy[16]; /* "" = not a route */
	char		route_reason[256];
	char		cache[8];		/* response cache: hit, miss, skipped; "" = off */
	char		saved[48];		/* a hit: what the answer cost when made */
} LedgerRecord;

/* bump when LedgerRecord changes: WAL replay skips records of another */
#define LEDGER_RECORD_LAYOUT 1

/*
 * One span in the span queue: a header and its attributes (a JSON object,
 * NUL-terminated).  Records are of varying length, a multiple of 8; a
 * record with `skip` set fills the end of the ring before it wraps.
 */
typedef struct SpanRecord
{
	uint32		len;			/* of the whole record, a multiple of 8 */
	uint32		skip;			/* padding to the end of the ring */
	TimestampTz ts;
	int64		duration_us;
	pg_uuid_t	request_id;
	bool		has_request_id;
	char		trace_id[33];
	char		span_id[17];
	char		parent_span_id[17];
	char		name[32];
	char		status[16];
	char		tenant[NAMEDATALEN];
	char		attrs[FLEXIBLE_ARRAY_MEMBER];
} SpanRecord;

#define SPAN_RECORD_SIZE(attrs_len) \
	TYPEALIGN(8, offsetof(SpanRecord, attrs) + (attrs_len) + 1)

/*
 * The slot of one database.  `dboid` is set and cleared only under the
 * claim lock (LedgerShared.claim_lock) and the slot's own lock, so either
 * lock makes it stable.  Everything else is under the slot's lock.
 *
 *	 - the ledger ring: records in [tail, head) wait for the resident
 *	   worker, which advances tail and durable_seq after its commit;
 *	 - the span ring: bytes in [span_tail, span_head) (offsets that only
 *	   grow; the ring's position is the offset modulo its size);
 *	 - the workers: the resident worker (ledger, spans, jobs, export), and
 *	   the job and callback workers started on demand.
 */
typedef struct LedgerSlot
{
	LWLock	   *lock;
	Oid			dboid;			/* InvalidOid: free */
	/* the resident worker */
	pid_t		worker_pid;		/* 0: none */
	Latch	   *worker_latch;
	bool		ready;			/* it has recovered and serves */
	bool		wal_ready;		/* backends make records durable in WAL
								 * themselves (walledger.c) */
	bool		no_extension;	/* it found no maester in the database */
	bool		has_extension;	/* it found maester (maybe waiting for UPDATE) */
	bool		stopping;		/* DROP/RENAME DATABASE waits for the workers */
	char		start_error[160];	/* why the launcher could not start one */
	TimestampTz start_error_at;
	/* the ledger ring */
	uint64		next_seq;
	uint64		durable_seq;
	uint64		head;
	uint64		tail;
	int64		written;		/* records written since server start */
	int64		dead_letters;	/* records that could not be written */
	/* the last PENDING records that went to the dead letter table */
	uint64		dead_pending[LEDGER_DEAD_KEPT];
	uint32		ndead_pending;	/* how many ever: the next goes at % KEPT */
	uint64		dead_overwritten;	/* highest seq pushed out of dead_pending */
	/* the span ring */
	uint64		span_head;
	uint64		span_tail;
	int64		spans_waiting;	/* records in the span ring now */
	int64		spans_queued;	/* since server start */
	int64		spans_dropped;	/* not queued: the span ring was full */
	int64		spans_written;
	int64		otlp_exported;	/* spans sent to the collector */
	int64		otlp_dropped;	/* spans given up on */
	int64		otlp_failed_posts;
	/* jobs: woken (and job_wakeups bumped) when jobs are submitted */
	uint64		job_wakeups;
	int			jobs_wanted;	/* job workers the resident worker asks for */
	pid_t		job_pid[MAESTER_MAX_JOB_WORKERS];	/* [0]: unused (resident) */
	Latch	   *job_latch[MAESTER_MAX_JOB_WORKERS];
	bool		callbacks_wanted;	/* job callbacks wait to be run */
	pid_t		callback_pid;
	/* the knowledge worker (src/kb.c) */
	bool		kb_wanted;		/* documents wait for it */
	pid_t		kb_pid;
	Latch	   *kb_latch;
	/* the rings follow: ledger_queue_size records, then span_queue_size kB */
} LedgerSlot;

typedef struct LedgerShared
{
	int64		epoch;			/* new at every shared memory init */
	LWLock	   *claim_lock;		/* assigning slots to databases */
	Latch	   *launcher_latch;
	pid_t		launcher_pid;
	int			nslots;
	int			queue_size;		/* ledger records per slot */
	Size		span_bytes;		/* bytes of each span ring */
	Size		slot_size;
	/* the key ledger records in WAL are signed with (walledger.c) */
	uint8		wal_key[32];
	char		slots[FLEXIBLE_ARRAY_MEMBER];
} LedgerShared;

/*
 * The span writer gathers spans for this long before it writes them: a
 * millisecond, so that span writing is spread over the calls instead of
 * coming in bursts (spanwrite.c), and a locked maester.span is tried
 * again after SPAN_RETRY_MS.
 */
#define SPAN_NAP_MS 1
#define SPAN_RETRY_MS 100

extern LedgerShared *ledger_shared;

extern Size ledger_shmem_size(void);
extern int	ledger_lwlocks(void);
extern void ledger_shmem_init(void);
extern LedgerSlot *ledger_slot(int i);
extern LedgerRecord *ledger_ring(LedgerSlot *slot);
extern char *span_ring(LedgerSlot *slot);

/* slots */
extern LedgerSlot *slot_claim(Oid dboid);
extern LedgerSlot *slot_find(Oid dboid);
extern bool slot_free(LedgerSlot *slot, Oid dboid);
extern void wake_launcher(void);

/* backends */
extern LedgerSlot *ledger_attach(void);
extern LedgerSlot *ledger_slot_if_ready(void);
extern uint64 ledger_enqueue(LedgerSlot *slot, LedgerRecord *rec);
extern bool ledger_try_enqueue(LedgerSlot *slot, LedgerRecord *rec);
extern int	span_enqueue(LedgerSlot *slot, SpanRecord **recs, int n);
extern int	span_room(LedgerSlot *slot, SpanRecord **recs, int n);
extern bool ledger_wait_durable(LedgerSlot *slot, uint64 seq, bool must);
extern uint64 ledger_durable_seq(LedgerSlot *slot);
extern bool ledger_record_dead(LedgerSlot *slot, uint64 seq);
extern void ledger_note_dead(LedgerSlot *slot, uint64 seq);
extern void ledger_copy_name(char *dst, const char *src, int size);

/* the resident worker */
extern int	ledger_take(LedgerSlot *slot, LedgerRecord *batch, int max, uint64 *tail);
extern Size span_take(LedgerSlot *slot, char *buf, Size size, int max);

#endif							/* MAESTER_LEDGER_H */

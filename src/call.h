/*-------------------------------------------------------------------------
 *
 * call.h
 *	  A model call and the machine that moves it: the structures shared by
 *	  call.c (a call: preparing, finishing, its result, grading), machine.c
 *	  (its phases and the driver, run_calls) and inflight.c (its attempts'
 *	  ledger records), and the interface of its drivers: llm_generate and
 *	  generate_batch (generate.c) and the job workers (job.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_CALL_H
#define MAESTER_CALL_H

#include "datatype/timestamp.h"
#include "utils/elog.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/uuid.h"

#include "budget.h"
#include "http.h"
#include "ledger.h"
#include "maester.h"
#include "provider.h"
#include "request.h"
#include "router.h"
#include "trace.h"

/* generate_batch: most requests in flight at once */
#define MAESTER_MAX_CONCURRENCY 256

/*
 * attributes of maester.generation, as this library fills them; the first
 * CALL_GENERATION_NATTS_0_1 are 0.1.0's, which maester.batch_result has
 * before its error fields (the later ones come after them)
 */
#define CALL_GENERATION_NATTS 26
#define CALL_GENERATION_NATTS_0_1 22

/* Everything a call returns (maester.generation) and identifies it */
typedef struct Generation
{
	pg_uuid_t	request_id;
	char		trace_id[33];
	const char *purpose;		/* generation, or evaluation for a grader */
	const char *provider;
	const char *model;
	GenResponse resp;
	bool		usage_estimated;
	double		latency_ms;
	int			attempts;
	bool		fallback_used;
	const char *prompt_name;
	const char *prompt_version;
	char		prompt_hash[MAESTER_SHA256_HEXLEN + 1];
	const char *requested_model;
	Numeric		cost;			/* exact cost of the successful attempt */
	bool		priced;
	const char *tags;			/* options.tags as JSON text, or NULL */
	Jsonb	   *checks;			/* the prompt version's checks, or NULL */
	Jsonb	   *evaluation;		/* maester.evaluate's result */
	CallTrace  *trace;			/* the call's spans */
	const char *last_provider;	/* the last target tried, for statistics */
	const char *last_model;
	const char *traceparent;	/* header value for the current attempt */
	const char *route_strategy; /* its route's strategy (strategy.c), or NULL */
	const char *route_reason;	/* why the first target was chosen */
} Generation;

/* State of one call across its targets */
typedef struct CallState
{
	LedgerSlot *slot;			/* this database's ledger queue */
	bool		downgraded;		/* a budget sent the call to a cheaper model */
	int64		est_input_tokens;	/* for the worst-case estimate */
	TimestampTz deadline;
	StringInfoData log;			/* "provider: class; ..." for the error detail */
	Failure		last;			/* the last failure */
	int			nkeyless;		/* targets skipped for a missing key */
} CallState;

/* The phases of a call: see machine.c */
typedef enum CallPhase
{
	PHASE_TARGET,
	PHASE_ATTEMPT,
	PHASE_PACED,
	PHASE_BACKOFF,
	PHASE_DURABLE,
	PHASE_SENT,
	PHASE_GRADING,
	PHASE_DONE,
	PHASE_FAILED
} CallPhase;

/* What one grading call (an llm_rubric check) answered */
typedef struct Grade
{
	bool		done;
	bool		failed;
	int			sqlstate;		/* when it failed: its error */
	char	   *message;
	char	   *detail;
	char	   *hint;
	char	   *answer;			/* the grader's text */
} Grade;

/* Call.cache_state: the response cache (respcache.c) */
#define RESPCACHE_OFF		0
#define RESPCACHE_SKIPPED	1	/* asked for, but the call samples */
#define RESPCACHE_MISS		2
#define RESPCACHE_HIT		3

typedef struct InFlight InFlight;	/* inflight.h */
typedef struct Call Call;

struct Call
{
	int			ordinal;		/* 1-based position in the batch */
	MemoryContext cxt;			/* everything of this call */
	CallPhase	phase;
	CallArgs	args;
	CallOptions opts;
	Generation	g;
	RoutePlan  *plan;
	int			ntargets;
	int			ti;				/* current target */
	int			tries;			/* attempts on it so far */
	bool		paced;			/* this attempt has its rate-limit turn */
	bool		tenant_paced;	/* and its tenant's (taken first) */
	bool		deadline_bound;	/* its timeout is the caller's deadline, not the provider's */
	TimestampTz paced_since;
	TimestampTz started;
	TimestampTz wake_at;		/* PACED, BACKOFF */
	CallState	cs;
	char	   *tenant;			/* maester.tenant when the call was prepared */
	text	   *content;		/* the prompt as sent, for capture */
	text	   *system;
	/* the attempt in progress */
	LedgerRecord *rec;
	Numeric		estimate;
	InFlight   *inflight;
	uint64		pending_seq;
	TimestampTz pending_at;
	bool		probe;			/* admitted as the circuit's half-open probe */
	char	   *key;
	HttpRequest req;
	bool		req_live;		/* req holds curl resources */
	Span	   *gen_span;
	Span	   *eval_span;
	TimestampTz attempt_start;
	bool		cancel_requested;	/* by its driver: end it as cancelled */
	bool		finished;		/* call_succeeded_finish has run */
	/* grading: this call's llm_rubric checks, each a call of its own */
	Call	   *parent;			/* for a grading call: the call it grades */
	int			grade_index;	/* and which of its checks */
	int			ngrades;
	int			grades_pending;
	Grade	   *grades;
	Call	  **spawned;		/* grading calls for run_calls to take */
	int			nspawned;
	void	   *driver_data;	/* its driver's own (embed.c: the inputs it holds) */
	/* the response cache (respcache.c) */
	int			cache_state;	/* RESPCACHE_*: off, skipped, miss, hit */
	uint8		cache_key[32];	/* SHA-256 of what makes the answer */
	int64		cache_ttl_us;
	Numeric		cache_saved;	/* a hit: what the answer cost when it was made */
	char	   *cache_model_name;	/* a hit: the identity of the model that made it */
	/* a failed call */
	int			sqlstate;
	const char *error_class;
	char	   *message;
	char	   *detail;
	const char *hint;
};

/* How each move of a call is wrapped */
typedef enum CallIsolation
{
	CALLS_SHARED,				/* no wrapping: an error ends every call */
	CALLS_SUBXACT,				/* a subtransaction: an error ends that call */
	CALLS_XACT					/* a transaction of its own (workers: none
								 * is held between moves, or across HTTP) */
} CallIsolation;

typedef struct CallDriver
{
	/* the next call to start, or NULL when there is none (for now) */
	Call	   *(*next) (void *arg);
	/* a call is DONE or FAILED; it is no longer run_calls' */
	void		(*done) (Call *c, void *arg);
	/* before each move of a call: e.g. take on its submitter's identity */
	void		(*enter) (Call *c, void *arg);
	/* after each move of a call, outside any transaction */
	void		(*after_move) (void *arg);
	/*
	 * at the start of each round, outside any transaction: the driver's own
	 * work; true to stop (in-flight calls are then torn down)
	 */
	bool		(*round) (void *arg);
	/* before run_calls sleeps: how long it may sleep at most (ms), or -1 */
	long		(*idle) (void *arg);
	void	   *arg;
	int			concurrency;	/* calls at once (their grading calls aside) */
	CallIsolation isolation;
	bool		persistent;		/* keep going when next() has nothing */
} CallDriver;

/* The questions of an evaluation's first pass (call_grader_ask) */
typedef struct GradeAsks
{
	int			n;
	int			max;
	char	  **prompts;
	char	  **models;			/* NULL: the default route */
} GradeAsks;

/* The answers for its second pass (call_grader_answer) */
typedef struct GradeAnswers
{
	Grade	   *grades;
	int			n;
	int			next;
} GradeAnswers;

/* strategy.c: order a route's targets by its strategy (span: model_route, or NULL) */
extern void route_strategy_apply(Call *c, Span *span);

/* machine.c */
extern void run_calls(CallDriver *d);

/* call.c */
extern Call *call_prepare(CallArgs *a, int ordinal, MemoryContext cxt,
						  const pg_uuid_t *request_id);
extern Call *call_from_request(Jsonb *request, int ordinal, MemoryContext cxt,
							   const pg_uuid_t *request_id);
extern Call *call_prepare_embedding(List *inputs, const char *model,
									const CallOptions *opts, int ordinal,
									MemoryContext cxt);
extern Call *call_from_error(int ordinal, MemoryContext cxt, ErrorData *edata);
extern void call_fail(Call *c);
extern void call_fail_with(Call *c, const char *provider, const char *error_class,
						   int sqlstate, char *message);
extern void call_note_failure(Call *c, const char *provider, const Failure *f);
extern void call_succeeded_finish(Call *c);
extern ErrorData *call_finish_isolated(Call *c);
extern void call_failed_finish(Call *c);
extern void call_raise(Call *c);
extern bool call_generation_values(Call *c, Datum *values, bool *nulls);
extern void call_request_cancel(Call *c);

/* grading (call.c): llm_rubric checks as calls of their own */
extern void call_grader_ask(void *arg, JsonbValue *param, JsonbContainer *extra,
							const char *content, int len, double *score,
							bool *passed, char **reason);
extern void call_grader_answer(void *arg, JsonbValue *param, JsonbContainer *extra,
							   const char *content, int len, double *score,
							   bool *passed, char **reason);
extern Call *call_prepare_grader(const char *prompt, const char *model, int ordinal,
								 MemoryContext cxt, Call *parent);
extern void call_grade_of(Call *grader, Grade *out, MemoryContext cxt);
extern bool call_evaluate_begin(Call *c);
extern void call_evaluate_end(Call *c);
extern void call_grade_collect(Call *grader);

#endif							/* MAESTER_CALL_H */

/*-------------------------------------------------------------------------
 *
 * call.h
 *	  The call machine of gateway.c, for the drivers outside it: the job
 *	  workers (job.c) run queued requests through it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_CALL_H
#define MAESTER_CALL_H

#include "utils/elog.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

typedef struct Call Call;

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
	/* persistent drivers: stop now? (in-flight calls are then torn down) */
	bool		(*stop) (void *arg);
	/* before run_calls sleeps */
	void		(*idle) (void *arg);
	void	   *arg;
	int			concurrency;
	CallIsolation isolation;
	bool		persistent;		/* keep going when next() has nothing */
} CallDriver;

extern void run_calls(CallDriver *d);

/* a call from a request object (llm_generate's argument names); raises */
extern Call *call_from_request(Jsonb *request, int ordinal, MemoryContext cxt,
							   const pg_uuid_t *request_id);
/* a call that failed before it started, with this error */
extern Call *call_from_error(int ordinal, MemoryContext cxt, ErrorData *edata);
extern void call_validate_request(Jsonb *request);

extern int	call_ordinal(Call *c);
extern MemoryContext call_context(Call *c);
extern bool call_succeeded(Call *c);
extern void call_finish_success(Call *c);
#define CALL_GENERATION_NATTS 22
extern bool call_generation_values(Call *c, Datum *values, bool *nulls);
extern void call_error(Call *c, int *sqlstate, const char **error_class,
					   const char **message, const char **detail);
extern void call_request_cancel(Call *c);

#endif							/* MAESTER_CALL_H */

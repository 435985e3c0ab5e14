/*-------------------------------------------------------------------------
 *
 * job.h
 *	  The job driver, for the resident worker and the job workers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_JOB_H
#define MAESTER_JOB_H

#include "call.h"
#include "ledger.h"

typedef struct JobWorker JobWorker;

extern JobWorker *jobs_begin(LedgerSlot *slot, int index, CallDriver *d);
extern bool jobs_round(JobWorker *w);
extern void jobs_idle(JobWorker *w);
extern void jobs_end(JobWorker *w, bool stopping);
extern void jobs_release_orphans(JobWorker *w);

#endif							/* MAESTER_JOB_H */

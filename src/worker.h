/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The launcher and the background workers of each database.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_WORKER_H
#define MAESTER_WORKER_H

extern void maester_register_launcher(void);
extern bool maester_worker_wait_catalog(const char *who);

#endif							/* MAESTER_WORKER_H */

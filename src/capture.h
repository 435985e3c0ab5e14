/*-------------------------------------------------------------------------
 *
 * capture.h
 *	  Keeping calls for replay (maester.capture_content).
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_CAPTURE_H
#define MAESTER_CAPTURE_H

#include "call.h"

extern void capture_call(const Generation *g, text *content, text *system, Jsonb *messages,
						 Jsonb *vars, Jsonb *options, int max_tokens);

#endif							/* MAESTER_CAPTURE_H */

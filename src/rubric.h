/*-------------------------------------------------------------------------
 *
 * rubric.h
 *	  The llm_rubric check's question to a grading model, and its verdict.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_RUBRIC_H
#define MAESTER_RUBRIC_H

#include "utils/jsonb.h"

#define RUBRIC_SYSTEM "You grade the output of an AI system against a rubric. " \
	"Answer with one JSON object and nothing else: " \
	"{\"pass\": true or false, \"score\": a number from 0 to 1, \"reason\": \"one sentence\"}."

/* the options of a grading call */
#define RUBRIC_OPTIONS "{\"response_format\": \"json\", \"temperature\": 0}"

extern void rubric_question(JsonbValue *param, JsonbContainer *extra,
							const char *content, int len,
							char **prompt, char **model);
extern void rubric_verdict(const char *answer, double *score, bool *passed,
						   char **reason);

#endif							/* MAESTER_RUBRIC_H */

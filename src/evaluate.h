/*-------------------------------------------------------------------------
 *
 * evaluate.h
 *	  Checks on a model's output (evaluate.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_EVALUATE_H
#define MAESTER_EVALUATE_H

#include "utils/jsonb.h"

/*
 * Grades `content` for one llm_rubric check: `param` is the check's
 * parameter, `extra` its assertion object (or NULL); fills score (0 to 1),
 * passed and reason (NULL when passed).
 */
typedef void (*RubricGrader) (void *arg, JsonbValue *param, JsonbContainer *extra,
							  const char *content, int len,
							  double *score, bool *passed, char **reason);

extern Jsonb *maester_evaluate(const char *content, int len, Jsonb *checks,
							   Jsonb *context, RubricGrader grader, void *grader_arg);
extern void maester_validate_checks(Jsonb *checks);

#endif							/* MAESTER_EVALUATE_H */

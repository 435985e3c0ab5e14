/*-------------------------------------------------------------------------
 *
 * citecheck.h
 *	  The citation checks of evaluate() (citecheck.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_CITECHECK_H
#define MAESTER_CITECHECK_H

#include "utils/jsonb.h"

extern bool citecheck_run(const char *name, JsonbValue *param, JsonbContainer *context,
						  const char *s, int len, bool validate_only,
						  double *score, bool *passed, char **reason);

#endif							/* MAESTER_CITECHECK_H */

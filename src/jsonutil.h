/*-------------------------------------------------------------------------
 *
 * jsonutil.h
 *	  Reading untrusted JSON without throwing (jsonutil.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_JSONUTIL_H
#define MAESTER_JSONUTIL_H

#include "lib/stringinfo.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

extern Jsonb *json_parse_object(const char *body, char **problem);
extern Jsonb *json_parse_any(const char *text, char **problem);
extern char *json_value_text(JsonbValue *v);
extern JsonbValue *json_get(JsonbContainer *c, const char *key);
extern char *json_get_string(JsonbContainer *c, const char *key);
extern double json_numeric_double(Numeric n);
extern bool json_get_int64(JsonbContainer *c, const char *key, int64 *out);
extern JsonbContainer *json_get_container(JsonbContainer *c, const char *key);

extern void json_append_members(StringInfo out, Jsonb *obj);
extern void json_append_number_member(StringInfo out, const char *key, double v);

#endif							/* MAESTER_JSONUTIL_H */

/*
 * fuzz.h -- the in-backend libFuzzer harness for maester (test/fuzz/README).
 */
#ifndef MAESTER_FUZZ_H
#define MAESTER_FUZZ_H

#include "postgres.h"

typedef struct FuzzTarget
{
	const char *name;
	/* one input; returns 0, or -1 to keep the input out of the corpus */
	int			(*run) (const uint8 *data, size_t size);
	/* an ERROR escaping run() that is a correct outcome; NULL: none is */
	bool		(*error_ok) (const ErrorData *e);
} FuzzTarget;

extern const FuzzTarget fuzz_targets[];
extern const int fuzz_ntargets;

/*
 * Record a finding that is not a crash (an oracle or a documented contract
 * does not hold): the first input per distinct `key` is saved under the
 * findings directory, a FUZZ-FINDING line goes to stderr, and fuzzing goes
 * on.  run.sh fails when there is any.
 */
extern void fuzz_finding(const char *key, const char *fmt,...) pg_attribute_printf(2, 3);

/* A memory context whose every chunk is its own malloc() (see fuzz_main.c) */
extern MemoryContext MallocContextCreate(MemoryContext parent, const char *name);

#endif

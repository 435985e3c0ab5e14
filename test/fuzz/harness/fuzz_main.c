/*-------------------------------------------------------------------------
 *
 * fuzz_main.c
 *	  Run libFuzzer inside a PostgreSQL backend: the SQL function
 *	  fuzz_run(target, findings_dir, libfuzzer_args) hands libFuzzer's
 *	  driver (LLVMFuzzerRunDriver, from libclang_rt.fuzzer_no_main) a
 *	  callback that runs one input of the chosen target.
 *
 * Each input runs in PG_TRY with CurrentMemoryContext set to a per-input
 * context that is reset afterwards.  An ERROR that the target says is a
 * correct outcome for bad input is flushed and forgotten; any other ERROR
 * is a finding (fuzz_finding: saved, reported, and fuzzing goes on).
 * Crashes and sanitizer reports are libFuzzer's: it saves the input and
 * stops.
 *
 * The per-input context is not an AllocSet: AddressSanitizer sees only
 * malloc'd blocks, and an AllocSet carves many chunks (rounded up to a
 * power of two) out of one block, so an overrun of a palloc'd chunk would
 * go unseen.  Here every palloc is its own malloc of exactly the size
 * asked (after a small header), so ASan's redzone starts at the first byte
 * past the chunk, pfree is free (use after free is caught), and repalloc
 * always moves.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "nodes/memnodes.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "fuzz.h"

PG_MODULE_MAGIC;

extern int	LLVMFuzzerRunDriver(int *argc, char ***argv,
								int (*cb) (const uint8 *data, size_t size));

/* ---------- a malloc-per-chunk memory context ---------- */

typedef struct FuzzChunk
{
	struct FuzzChunk *prev;
	struct FuzzChunk *next;
	Size		size;
	MemoryContext context;		/* last: GetMemoryChunkContext() reads it */
} FuzzChunk;

StaticAssertDecl(sizeof(FuzzChunk) % MAXIMUM_ALIGNOF == 0,
				 "chunk header must keep chunks MAXALIGNed");

typedef struct MallocContext
{
	MemoryContextData header;
	FuzzChunk  *first;
	int64		nchunks;
} MallocContext;

static void *
mc_alloc(MemoryContext cxt, Size size)
{
	MallocContext *mc = (MallocContext *) cxt;
	FuzzChunk  *c = malloc(sizeof(FuzzChunk) + size);

	if (c == NULL)
		return NULL;
	c->size = size;
	c->context = cxt;
	c->prev = NULL;
	c->next = mc->first;
	if (mc->first)
		mc->first->prev = c;
	mc->first = c;
	mc->nchunks++;
	cxt->mem_allocated += size;
	return c + 1;
}

static void
mc_free(MemoryContext cxt, void *pointer)
{
	MallocContext *mc = (MallocContext *) cxt;
	FuzzChunk  *c = ((FuzzChunk *) pointer) - 1;

	if (c->prev)
		c->prev->next = c->next;
	else
		mc->first = c->next;
	if (c->next)
		c->next->prev = c->prev;
	mc->nchunks--;
	cxt->mem_allocated -= c->size;
	free(c);
}

static void *
mc_realloc(MemoryContext cxt, void *pointer, Size size)
{
	FuzzChunk  *c = ((FuzzChunk *) pointer) - 1;
	void	   *n = mc_alloc(cxt, size);

	if (n == NULL)
		return NULL;
	memcpy(n, pointer, Min(c->size, size));
	mc_free(cxt, pointer);
	return n;
}

static void
mc_reset(MemoryContext cxt)
{
	MallocContext *mc = (MallocContext *) cxt;

	while (mc->first)
	{
		FuzzChunk  *c = mc->first;

		mc->first = c->next;
		free(c);
	}
	mc->nchunks = 0;
	cxt->mem_allocated = 0;
}

static void
mc_delete(MemoryContext cxt)
{
	mc_reset(cxt);
	free(cxt);
}

static Size
mc_chunk_space(MemoryContext cxt, void *pointer)
{
	return (((FuzzChunk *) pointer) - 1)->size + sizeof(FuzzChunk);
}

static bool
mc_is_empty(MemoryContext cxt)
{
	return ((MallocContext *) cxt)->first == NULL;
}

static void
mc_stats(MemoryContext cxt, MemoryStatsPrintFunc printfunc, void *passthru,
		 MemoryContextCounters *totals, bool print_to_stderr)
{
	MallocContext *mc = (MallocContext *) cxt;

	if (printfunc)
	{
		char		buf[100];

		snprintf(buf, sizeof(buf), "%lld chunks, %zu bytes (malloc context)",
				 (long long) mc->nchunks, (size_t) cxt->mem_allocated);
		printfunc(cxt, passthru, buf, print_to_stderr);
	}
	if (totals)
	{
		totals->nblocks += mc->nchunks;
		totals->totalspace += cxt->mem_allocated + mc->nchunks * sizeof(FuzzChunk);
	}
}

static const MemoryContextMethods mc_methods = {
	.alloc = mc_alloc,
	.free_p = mc_free,
	.realloc = mc_realloc,
	.reset = mc_reset,
	.delete_context = mc_delete,
	.get_chunk_space = mc_chunk_space,
	.is_empty = mc_is_empty,
	.stats = mc_stats,
};

MemoryContext
MallocContextCreate(MemoryContext parent, const char *name)
{
	MallocContext *mc = calloc(1, sizeof(MallocContext));

	if (mc == NULL)
		elog(ERROR, "out of memory");
	/* the tag only passes MemoryContextIsValid(); the methods are ours */
	MemoryContextCreate((MemoryContext) mc, T_AllocSetContext, &mc_methods,
						parent, name);
	return (MemoryContext) mc;
}

/* ---------- findings that are not crashes ---------- */

#define MAX_KEYS 64

static const FuzzTarget *current;
static MemoryContext input_cxt;
static const uint8 *cur_data;
static size_t cur_size;
static char *findings_dir;
static int	nkeys;
static char *keys[MAX_KEYS];
static int64 key_count[MAX_KEYS];
static char *key_file[MAX_KEYS];
static int64 nexecs;

static uint64
fnv1a(const uint8 *d, size_t n)
{
	uint64		h = UINT64CONST(1469598103934665603);

	for (size_t i = 0; i < n; i++)
		h = (h ^ d[i]) * UINT64CONST(1099511628211);
	return h;
}

void
fuzz_finding(const char *key, const char *fmt,...)
{
	char		msg[2048];
	char		path[1024];
	va_list		ap;
	int			k;
	FILE	   *f;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	for (k = 0; k < nkeys; k++)
		if (strcmp(keys[k], key) == 0)
			break;
	if (k < nkeys)
	{
		key_count[k]++;
		return;
	}
	if (nkeys == MAX_KEYS)
		k = MAX_KEYS - 1;		/* table full: count under the last key */
	else
	{
		char	   *safe = strdup(key);

		for (char *p = safe; *p; p++)
			if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
				  (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.'))
				*p = '_';
		snprintf(path, sizeof(path), "%s/%s-%.60s-%016llx", findings_dir,
				 current->name, safe,
				 (unsigned long long) fnv1a(cur_data, cur_size));
		free(safe);
		f = fopen(path, "wb");
		if (f)
		{
			fwrite(cur_data, 1, cur_size, f);
			fclose(f);
		}
		keys[nkeys] = strdup(key);
		key_file[nkeys] = strdup(path);
		key_count[nkeys] = 1;
		nkeys++;
		fprintf(stderr, "FUZZ-FINDING target=%s key=%s input=%s\n  %s\n",
				current->name, key, path, msg);
	}
}

static void
print_summary(void)
{
	fprintf(stderr, "FUZZ-SUMMARY target=%s inputs=%lld findings=%d\n",
			current ? current->name : "?", (long long) nexecs, nkeys);
	for (int k = 0; k < nkeys; k++)
		fprintf(stderr, "FUZZ-SUMMARY-FINDING key=%s count=%lld first=%s\n",
				keys[k], (long long) key_count[k], key_file[k]);
}

/* ---------- the libFuzzer callback ---------- */

static int
one_input(const uint8 *data, size_t size)
{
	MemoryContext old = MemoryContextSwitchTo(input_cxt);
	volatile int rc = 0;

	cur_data = data;
	cur_size = size;
	nexecs++;
	PG_TRY();
	{
		rc = current->run(data, size);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(input_cxt);
		edata = CopyErrorData();
		FlushErrorState();
		if (current->error_ok == NULL || !current->error_ok(edata))
		{
			char		key[200];

			snprintf(key, sizeof(key), "error-%s-%s-%d",
					 unpack_sql_state(edata->sqlerrcode),
					 edata->filename ? edata->filename : "?", edata->lineno);
			fuzz_finding(key, "an ERROR escaped the code under test: %s: %s (%s:%d, %s)",
						 unpack_sql_state(edata->sqlerrcode), edata->message,
						 edata->filename ? edata->filename : "?", edata->lineno,
						 edata->funcname ? edata->funcname : "?");
		}
		rc = 0;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	MemoryContextReset(input_cxt);
	return rc;
}

PG_FUNCTION_INFO_V1(fuzz_run);

/*
 * fuzz_run(target text, findings_dir text, args text[]) RETURNS int:
 * run libFuzzer with `args` (its flags and corpus directories) on
 * `target`.  libFuzzer exits the process when it is done.
 */
Datum
fuzz_run(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(2);
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			argc;
	char	  **argv;
	int			rc;

	findings_dir = MemoryContextStrdup(TopMemoryContext,
									   text_to_cstring(PG_GETARG_TEXT_PP(1)));
	for (int i = 0; i < fuzz_ntargets; i++)
		if (strcmp(fuzz_targets[i].name, name) == 0)
			current = &fuzz_targets[i];
	if (current == NULL)
		ereport(ERROR, (errmsg("no fuzz target \"%s\"", name)));
	(void) mkdir(findings_dir, 0755);

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	argv = malloc(sizeof(char *) * (n + 2));
	argv[0] = "maester-fuzz";
	for (int i = 0; i < n; i++)
		argv[i + 1] = strdup(TextDatumGetCString(elems[i]));
	argv[n + 1] = NULL;
	argc = n + 1;

	input_cxt = MallocContextCreate(TopMemoryContext, "fuzz input");
	atexit(print_summary);
	rc = LLVMFuzzerRunDriver(&argc, &argv, one_input);
	PG_RETURN_INT32(rc);
}

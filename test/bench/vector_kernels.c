/*
 * vector_kernels.c (bench): the throughput of maester's vector kernels
 * (src/vector_kernels.c, linked as is) per core, next to a plain C loop
 * over the same data in the same run, and next to the memory-bandwidth
 * limit (a read of the same bytes with nothing to compute).
 *
 * For each dimension count, N vectors (about 512 MB, far beyond the
 * caches) are scored against one query, as an exact top-k search does:
 * each pass reads every vector once.  Reported: vectors/s, GB/s read,
 * and the time for 100,000 vectors.  Every kernel's scores are checked
 * against the plain loop's (float rounding apart).
 *
 * Build and run: test/bench/vector.sh
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vector_kernels.h"

#define DATA_BYTES (512L << 20)

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* the obvious loop, as -O2 compiles it (no reordering of the float sum) */
static float
plain_dot(const float *a, const float *b, int n)
{
	float		s = 0;

	for (int i = 0; i < n; i++)
		s += a[i] * b[i];
	return s;
}

/* the bandwidth limit: read every float, almost nothing to compute */
static float
read_only(const float *a, const float *b, int n)
{
	const unsigned int *u = (const unsigned int *) a;
	unsigned int x = 0;

	(void) b;
	for (int i = 0; i < n; i += 16)
		x ^= u[i];				/* one load a 64-byte line */
	return (float) x;
}

typedef float (*DotFn) (const float *, const float *, int);

static double
run(DotFn fn, const float *data, const float *q, long nvec, int dims, float *scores, int passes)
{
	double		best = 1e30;

	for (int p = 0; p < passes; p++)
	{
		double		t0 = now();

		for (long v = 0; v < nvec; v++)
			scores[v] = fn(data + v * dims, q, dims);
		best = fmin(best, now() - t0);
	}
	return best;
}

int
main(int argc, char **argv)
{
	int			dims_list[] = {384, 768, 1536};
	int			passes = argc > 1 ? atoi(argv[1]) : 3;
	const VectorKernels *best = vector_kernels();
	const char *names[] = {"scalar", "avx2", "avx512", "neon"};

	printf("method: N vectors of D floats (%ld MB) scored against one query, %d passes, best pass;\n"
		   "one core; the kernels are src/vector_kernels.c as linked into maester (best here: %s)\n\n",
		   DATA_BYTES >> 20, passes, best->name);
	printf("%-6s %-22s %12s %9s %14s %9s\n", "dims", "method", "vectors/s", "GB/s", "ms/100k vecs", "vs plain");
	for (int di = 0; di < 3; di++)
	{
		int			dims = dims_list[di];
		long		nvec = DATA_BYTES / (sizeof(float) * dims);
		float	   *data = aligned_alloc(64, sizeof(float) * nvec * dims);
		float	   *q = aligned_alloc(64, sizeof(float) * dims);
		float	   *ref = malloc(sizeof(float) * nvec);
		float	   *scores = malloc(sizeof(float) * nvec);
		double		t_plain;
		double		t;

		srand(42 + dims);
		for (long i = 0; i < nvec * dims; i++)
			data[i] = (float) rand() / RAND_MAX * 2 - 1;
		for (int i = 0; i < dims; i++)
			q[i] = (float) rand() / RAND_MAX * 2 - 1;

		t = run(read_only, data, q, nvec, dims, scores, passes);
		printf("%-6d %-22s %12.0f %9.2f %14.2f %9s\n", dims, "memory read (limit)", nvec / t,
			   nvec * dims * 4.0 / t / 1e9, 1e5 / (nvec / t) * 1e3, "");
		t_plain = run(plain_dot, data, q, nvec, dims, ref, passes);
		printf("%-6d %-22s %12.0f %9.2f %14.2f %9s\n", dims, "plain C loop", nvec / t_plain,
			   nvec * dims * 4.0 / t_plain / 1e9, 1e5 / (nvec / t_plain) * 1e3, "1.00x");
		for (int k = 0; k < 4; k++)
		{
			const VectorKernels *kk = vector_kernels_named(names[k]);
			char		label[64];
			double		maxerr = 0;

			if (kk == NULL)
				continue;
			t = run(kk->dot, data, q, nvec, dims, scores, passes);
			for (long v = 0; v < nvec; v++)
				maxerr = fmax(maxerr, fabs(scores[v] - ref[v]) / (1 + fabs(ref[v])));
			snprintf(label, sizeof(label), "maester %s%s", kk->name, kk == best ? " (used)" : "");
			printf("%-6d %-22s %12.0f %9.2f %14.2f %8.2fx   max rel. diff %.1e%s\n", dims, label,
				   nvec / t, nvec * dims * 4.0 / t / 1e9, 1e5 / (nvec / t) * 1e3, t_plain / t,
				   maxerr, maxerr > 1e-4 ? "  MISMATCH" : "");
			if (maxerr > 1e-4)
				return 1;
		}
		printf("\n");
		free(data);
		free(q);
		free(ref);
		free(scores);
	}
	return 0;
}

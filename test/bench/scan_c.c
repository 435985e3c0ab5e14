/*
 * scan_c.c: the physical limit of an exact top-10 search -- N vectors of
 * D floats in memory, scored against one query with maester's kernels
 * (src/vector_kernels.c, the best this CPU runs) and with a plain C loop,
 * keeping the 10 best; best of P passes, one core.  test/bench/search.sh
 * prints it next to maester.search over the same number of vectors.
 *
 *   scan_c N D [P]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "vector_kernels.h"

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static float
plain_dot(const float *a, const float *b, int n)
{
	float		s = 0;

	for (int i = 0; i < n; i++)
		s += a[i] * b[i];
	return s;
}

/* top-10 by insertion into a small sorted array */
static double
scan(float (*dot) (const float *, const float *, int), const float *data, const float *q,
	 long n, int d, int passes)
{
	double		best = 1e30;

	for (int p = 0; p < passes; p++)
	{
		float		top[10];
		int			ntop = 0;
		double		t0 = now();

		for (long v = 0; v < n; v++)
		{
			float		s = dot(data + v * d, q, d);
			int			i;

			if (ntop == 10 && s <= top[9])
				continue;
			i = ntop < 10 ? ntop++ : 9;
			while (i > 0 && top[i - 1] < s)
			{
				top[i] = top[i - 1];
				i--;
			}
			top[i] = s;
		}
		best = fmin(best, now() - t0);
	}
	return best;
}

int
main(int argc, char **argv)
{
	long		n = argc > 1 ? atol(argv[1]) : 100000;
	int			d = argc > 2 ? atoi(argv[2]) : 384;
	int			passes = argc > 3 ? atoi(argv[3]) : 5;
	const VectorKernels *k = vector_kernels();
	float	   *data = aligned_alloc(64, sizeof(float) * n * d);
	float	   *q = aligned_alloc(64, sizeof(float) * d);
	double		tk, tp;

	srand(7);
	for (long i = 0; i < n * d; i++)
		data[i] = (float) rand() / RAND_MAX * 2 - 1;
	for (int i = 0; i < d; i++)
		q[i] = (float) rand() / RAND_MAX * 2 - 1;
	tk = scan(k->dot, data, q, n, d, passes);
	tp = scan(plain_dot, data, q, n, d, passes);
	printf("%.3f %.3f %s\n", tk * 1000, tp * 1000, k->name);
	return 0;
}

/*-------------------------------------------------------------------------
 *
 * vector_kernels.h
 *	  Float vector kernels with explicit SIMD chosen at run time
 *	  (vector_kernels.c).  Plain C, no PostgreSQL headers: the benchmark
 *	  links them on their own.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_VECTOR_KERNELS_H
#define MAESTER_VECTOR_KERNELS_H

/* The kernels of one instruction set */
typedef struct VectorKernels
{
	const char *name;			/* avx512, avx2, neon, scalar */
	float		(*dot) (const float *a, const float *b, int n);
	float		(*l2sq) (const float *a, const float *b, int n);
	/* a.b, a.a and b.b in one pass (cosine) */
	void		(*dot3) (const float *a, const float *b, int n,
						 float *ab, float *aa, float *bb);
} VectorKernels;

/* The best kernels this CPU runs (chosen once, on first use) */
extern const VectorKernels *vector_kernels(void);

/* The portable ones, and any by name if this CPU runs them (benchmarks) */
extern const VectorKernels vector_kernels_scalar;
extern const VectorKernels *vector_kernels_named(const char *name);

#endif							/* MAESTER_VECTOR_KERNELS_H */

/*-------------------------------------------------------------------------
 *
 * vector_kernels.c
 *	  Dot product, squared L2 distance and the three sums of a cosine,
 *	  over float arrays, with explicit SIMD chosen at run time.
 *
 * PostgreSQL builds with -O2 and without -ffast-math, so a compiler may
 * not reorder a float sum and will not vectorise these loops by itself.
 * They are written out: AVX-512F, AVX2 with FMA (x86-64, picked by
 * __builtin_cpu_supports), NEON (every aarch64 CPU), and a portable loop
 * with four accumulators.  Each sums in float lanes (as pgvector does),
 * in several independent accumulators so that the adds overlap; the
 * result differs from a sequential sum by rounding only.
 *
 * Plain C: no PostgreSQL headers, so that test/bench/vector.sh links these
 * very kernels next to its baseline loop.
 *
 *-------------------------------------------------------------------------
 */
#include <stddef.h>

#include "vector_kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_X86_SIMD 1
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#define HAVE_NEON 1
#include <arm_neon.h>
#endif

/* ---- portable ---- */

static float
dot_scalar(const float *a, const float *b, int n)
{
	float		s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	int			i = 0;

	for (; i + 4 <= n; i += 4)
	{
		s0 += a[i] * b[i];
		s1 += a[i + 1] * b[i + 1];
		s2 += a[i + 2] * b[i + 2];
		s3 += a[i + 3] * b[i + 3];
	}
	for (; i < n; i++)
		s0 += a[i] * b[i];
	return (s0 + s1) + (s2 + s3);
}

static float
l2sq_scalar(const float *a, const float *b, int n)
{
	float		s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	int			i = 0;

	for (; i + 4 <= n; i += 4)
	{
		float		d0 = a[i] - b[i], d1 = a[i + 1] - b[i + 1];
		float		d2 = a[i + 2] - b[i + 2], d3 = a[i + 3] - b[i + 3];

		s0 += d0 * d0;
		s1 += d1 * d1;
		s2 += d2 * d2;
		s3 += d3 * d3;
	}
	for (; i < n; i++)
	{
		float		d = a[i] - b[i];

		s0 += d * d;
	}
	return (s0 + s1) + (s2 + s3);
}

static void
dot3_scalar(const float *a, const float *b, int n, float *ab, float *aa, float *bb)
{
	float		x0 = 0, x1 = 0, y0 = 0, y1 = 0, z0 = 0, z1 = 0;
	int			i = 0;

	for (; i + 2 <= n; i += 2)
	{
		x0 += a[i] * b[i];
		x1 += a[i + 1] * b[i + 1];
		y0 += a[i] * a[i];
		y1 += a[i + 1] * a[i + 1];
		z0 += b[i] * b[i];
		z1 += b[i + 1] * b[i + 1];
	}
	for (; i < n; i++)
	{
		x0 += a[i] * b[i];
		y0 += a[i] * a[i];
		z0 += b[i] * b[i];
	}
	*ab = x0 + x1;
	*aa = y0 + y1;
	*bb = z0 + z1;
}

const VectorKernels vector_kernels_scalar = {"scalar", dot_scalar, l2sq_scalar, dot3_scalar};

#ifdef HAVE_X86_SIMD

/* ---- AVX2 + FMA: 8 floats a register, four registers a step ---- */

__attribute__((target("avx2,fma")))
static inline float
hsum256(__m256 v)
{
	__m128		lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	__m128		sh = _mm_movehdup_ps(lo);
	__m128		s = _mm_add_ps(lo, sh);

	return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehl_ps(sh, s)));
}

__attribute__((target("avx2,fma")))
static float
dot_avx2(const float *a, const float *b, int n)
{
	__m256		s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
	__m256		s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
	int			i = 0;
	float		r;

	for (; i + 32 <= n; i += 32)
	{
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
		s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
		s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
		s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
	}
	for (; i + 8 <= n; i += 8)
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
	r = hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
	for (; i < n; i++)
		r += a[i] * b[i];
	return r;
}

__attribute__((target("avx2,fma")))
static float
l2sq_avx2(const float *a, const float *b, int n)
{
	__m256		s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
	int			i = 0;
	float		r;

	for (; i + 16 <= n; i += 16)
	{
		__m256		d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
		__m256		d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));

		s0 = _mm256_fmadd_ps(d0, d0, s0);
		s1 = _mm256_fmadd_ps(d1, d1, s1);
	}
	for (; i + 8 <= n; i += 8)
	{
		__m256		d = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));

		s0 = _mm256_fmadd_ps(d, d, s0);
	}
	r = hsum256(_mm256_add_ps(s0, s1));
	for (; i < n; i++)
	{
		float		d = a[i] - b[i];

		r += d * d;
	}
	return r;
}

__attribute__((target("avx2,fma")))
static void
dot3_avx2(const float *a, const float *b, int n, float *ab, float *aa, float *bb)
{
	__m256		x = _mm256_setzero_ps(), y = _mm256_setzero_ps(), z = _mm256_setzero_ps();
	int			i = 0;
	float		rx, ry, rz;

	for (; i + 8 <= n; i += 8)
	{
		__m256		va = _mm256_loadu_ps(a + i);
		__m256		vb = _mm256_loadu_ps(b + i);

		x = _mm256_fmadd_ps(va, vb, x);
		y = _mm256_fmadd_ps(va, va, y);
		z = _mm256_fmadd_ps(vb, vb, z);
	}
	rx = hsum256(x);
	ry = hsum256(y);
	rz = hsum256(z);
	for (; i < n; i++)
	{
		rx += a[i] * b[i];
		ry += a[i] * a[i];
		rz += b[i] * b[i];
	}
	*ab = rx;
	*aa = ry;
	*bb = rz;
}

static const VectorKernels kernels_avx2 = {"avx2", dot_avx2, l2sq_avx2, dot3_avx2};

/* ---- AVX-512F: 16 floats a register; the tail by a masked load ---- */

__attribute__((target("avx512f")))
static float
dot_avx512(const float *a, const float *b, int n)
{
	__m512		s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
	__m512		s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
	int			i = 0;

	for (; i + 64 <= n; i += 64)
	{
		s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
		s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
		s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
		s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
	}
	for (; i + 16 <= n; i += 16)
		s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
	if (i < n)
	{
		__mmask16	m = (__mmask16) ((1u << (n - i)) - 1);

		s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
	}
	return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

__attribute__((target("avx512f")))
static float
l2sq_avx512(const float *a, const float *b, int n)
{
	__m512		s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
	int			i = 0;

	for (; i + 32 <= n; i += 32)
	{
		__m512		d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
		__m512		d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));

		s0 = _mm512_fmadd_ps(d0, d0, s0);
		s1 = _mm512_fmadd_ps(d1, d1, s1);
	}
	for (; i + 16 <= n; i += 16)
	{
		__m512		d = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));

		s0 = _mm512_fmadd_ps(d, d, s0);
	}
	if (i < n)
	{
		__mmask16	m = (__mmask16) ((1u << (n - i)) - 1);
		__m512		d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));

		s1 = _mm512_fmadd_ps(d, d, s1);
	}
	return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

__attribute__((target("avx512f")))
static void
dot3_avx512(const float *a, const float *b, int n, float *ab, float *aa, float *bb)
{
	__m512		x = _mm512_setzero_ps(), y = _mm512_setzero_ps(), z = _mm512_setzero_ps();
	int			i = 0;

	for (; i < n; i += 16)
	{
		__mmask16	m = n - i >= 16 ? (__mmask16) 0xFFFF : (__mmask16) ((1u << (n - i)) - 1);
		__m512		va = _mm512_maskz_loadu_ps(m, a + i);
		__m512		vb = _mm512_maskz_loadu_ps(m, b + i);

		x = _mm512_fmadd_ps(va, vb, x);
		y = _mm512_fmadd_ps(va, va, y);
		z = _mm512_fmadd_ps(vb, vb, z);
	}
	*ab = _mm512_reduce_add_ps(x);
	*aa = _mm512_reduce_add_ps(y);
	*bb = _mm512_reduce_add_ps(z);
}

static const VectorKernels kernels_avx512 = {"avx512", dot_avx512, l2sq_avx512, dot3_avx512};

#endif							/* HAVE_X86_SIMD */

#ifdef HAVE_NEON

/* ---- NEON: 4 floats a register, four registers a step ---- */

static float
dot_neon(const float *a, const float *b, int n)
{
	float32x4_t s0 = vdupq_n_f32(0), s1 = vdupq_n_f32(0);
	float32x4_t s2 = vdupq_n_f32(0), s3 = vdupq_n_f32(0);
	int			i = 0;
	float		r;

	for (; i + 16 <= n; i += 16)
	{
		s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
		s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
		s2 = vfmaq_f32(s2, vld1q_f32(a + i + 8), vld1q_f32(b + i + 8));
		s3 = vfmaq_f32(s3, vld1q_f32(a + i + 12), vld1q_f32(b + i + 12));
	}
	for (; i + 4 <= n; i += 4)
		s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
	r = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
	for (; i < n; i++)
		r += a[i] * b[i];
	return r;
}

static float
l2sq_neon(const float *a, const float *b, int n)
{
	float32x4_t s0 = vdupq_n_f32(0), s1 = vdupq_n_f32(0);
	int			i = 0;
	float		r;

	for (; i + 8 <= n; i += 8)
	{
		float32x4_t d0 = vsubq_f32(vld1q_f32(a + i), vld1q_f32(b + i));
		float32x4_t d1 = vsubq_f32(vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));

		s0 = vfmaq_f32(s0, d0, d0);
		s1 = vfmaq_f32(s1, d1, d1);
	}
	r = vaddvq_f32(vaddq_f32(s0, s1));
	for (; i < n; i++)
	{
		float		d = a[i] - b[i];

		r += d * d;
	}
	return r;
}

static void
dot3_neon(const float *a, const float *b, int n, float *ab, float *aa, float *bb)
{
	float32x4_t x = vdupq_n_f32(0), y = vdupq_n_f32(0), z = vdupq_n_f32(0);
	int			i = 0;
	float		rx, ry, rz;

	for (; i + 4 <= n; i += 4)
	{
		float32x4_t va = vld1q_f32(a + i);
		float32x4_t vb = vld1q_f32(b + i);

		x = vfmaq_f32(x, va, vb);
		y = vfmaq_f32(y, va, va);
		z = vfmaq_f32(z, vb, vb);
	}
	rx = vaddvq_f32(x);
	ry = vaddvq_f32(y);
	rz = vaddvq_f32(z);
	for (; i < n; i++)
	{
		rx += a[i] * b[i];
		ry += a[i] * a[i];
		rz += b[i] * b[i];
	}
	*ab = rx;
	*aa = ry;
	*bb = rz;
}

static const VectorKernels kernels_neon = {"neon", dot_neon, l2sq_neon, dot3_neon};

#endif							/* HAVE_NEON */

/*
 * The kernels for this CPU: AVX2 where it runs, before AVX-512.  Both are
 * bound by memory bandwidth on large scans, and AVX2 was faster on every
 * length measured here (test/bench/vector.sh: 384 to 1,536 dimensions,
 * 16.6 vs 12.9 M vectors/s at 384, 24 GB/s, the memory read limit), as
 * AVX-512 clocks many cores down;
 * maester.vector_kernels = avx512 chooses it where it pays.
 */
const VectorKernels *
vector_kernels(void)
{
	static const VectorKernels *chosen = NULL;

	if (chosen != NULL)
		return chosen;
	chosen = &vector_kernels_scalar;
#ifdef HAVE_X86_SIMD
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
		chosen = &kernels_avx2;
	else if (__builtin_cpu_supports("avx512f"))
		chosen = &kernels_avx512;
#endif
#ifdef HAVE_NEON
	chosen = &kernels_neon;
#endif
	return chosen;
}

/* A kernel set by name (NULL: unknown or not on this CPU), for benchmarks */
const VectorKernels *
vector_kernels_named(const char *name)
{
	const VectorKernels *best = vector_kernels();
	const VectorKernels *all[] = {
		&vector_kernels_scalar,
#ifdef HAVE_X86_SIMD
		&kernels_avx2, &kernels_avx512,
#endif
#ifdef HAVE_NEON
		&kernels_neon,
#endif
	};

	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
	{
		const char *a = all[i]->name;
		const char *b = name;

		while (*a && *a == *b)
			a++, b++;
		if (*a != *b)
			continue;
#ifdef HAVE_X86_SIMD
		if (all[i] == &kernels_avx512 && !__builtin_cpu_supports("avx512f"))
			return NULL;
		if (all[i] == &kernels_avx2 &&
			!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
			return NULL;
#endif
		(void) best;
		return all[i];
	}
	return NULL;
}

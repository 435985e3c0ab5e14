/*-------------------------------------------------------------------------
 *
 * vector.c
 *	  maester.inner_product, maester.cosine_similarity and
 *	  maester.l2_distance over real[] (the vectors maester.embed returns),
 *	  on the kernels of vector_kernels.c.
 *
 * Strict: a NULL array gives NULL (the functions are STRICT); an array
 * with a NULL element, of more than one dimension, empty, or of another
 * length than the other is an error.  The sums are taken in float lanes
 * and returned as double precision.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"

#include "settings.h"
#include "vector_kernels.h"

/* The kernels maester.vector_kernels names (auto: the best) */
static inline const VectorKernels *
kernels(void)
{
	return maester_kernels ? maester_kernels : vector_kernels();
}

/* The floats of a real[] argument; raises for a NULL element or a bad shape */
static const float *
vector_arg(ArrayType *a, const char *what, int *n)
{
	if (ARR_ELEMTYPE(a) != FLOAT4OID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("%s must be real[]", what)));
	if (ARR_NDIM(a) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is empty", what)));
	if (ARR_NDIM(a) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s must be a one-dimensional array, not of %d dimensions", what, ARR_NDIM(a))));
	if (ARR_HASNULL(a) && array_contains_nulls(a))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s has a NULL element", what)));
	*n = ARR_DIMS(a)[0];
	return (const float *) ARR_DATA_PTR(a);
}

/* Both vectors, of one length */
static int
vector_args(FunctionCallInfo fcinfo, const float **a, const float **b)
{
	int			na;
	int			nb;

	*a = vector_arg(PG_GETARG_ARRAYTYPE_P(0), "the first vector", &na);
	*b = vector_arg(PG_GETARG_ARRAYTYPE_P(1), "the second vector", &nb);
	if (na != nb)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("vectors of different dimensions: %d and %d", na, nb)));
	return na;
}

PG_FUNCTION_INFO_V1(vector_inner_product);
Datum
vector_inner_product(PG_FUNCTION_ARGS)
{
	const float *a;
	const float *b;
	int			n = vector_args(fcinfo, &a, &b);

	PG_RETURN_FLOAT8((double) kernels()->dot(a, b, n));
}

PG_FUNCTION_INFO_V1(vector_l2_distance);
Datum
vector_l2_distance(PG_FUNCTION_ARGS)
{
	const float *a;
	const float *b;
	int			n = vector_args(fcinfo, &a, &b);

	PG_RETURN_FLOAT8(sqrt((double) kernels()->l2sq(a, b, n)));
}

PG_FUNCTION_INFO_V1(vector_cosine_similarity);
/* NULL for a vector of norm 0, whose direction is undefined */
Datum
vector_cosine_similarity(PG_FUNCTION_ARGS)
{
	const float *a;
	const float *b;
	int			n = vector_args(fcinfo, &a, &b);
	float		ab;
	float		aa;
	float		bb;
	double		c;

	kernels()->dot3(a, b, n, &ab, &aa, &bb);
	if (aa == 0 || bb == 0)
		PG_RETURN_NULL();
	c = (double) ab / sqrt((double) aa * (double) bb);
	/* rounding may take it just past 1 */
	PG_RETURN_FLOAT8(Max(-1.0, Min(1.0, c)));
}

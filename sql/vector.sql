-- Vector helpers (issue #16): inner product, cosine similarity and L2
-- distance in C, with SIMD chosen at run time (AVX-512 on the test
-- machine), against the same sums in SQL for every length up to 70 (so
-- that every kernel's tail is exercised) and for embedding lengths
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
SELECT setseed(0.42);
CREATE TEMP TABLE pairs AS
SELECT n, array_agg((random() * 2 - 1)::real ORDER BY i) AS a, array_agg((random() * 2 - 1)::real ORDER BY i) AS b
  FROM generate_series(1, 70) n, generate_series(1, n) i GROUP BY n
UNION ALL
SELECT n, array_agg((random() * 2 - 1)::real ORDER BY i), array_agg((random() * 2 - 1)::real ORDER BY i)
  FROM unnest(ARRAY[384, 768, 1536, 3072]) n, generate_series(1, n) i GROUP BY n;
CREATE TEMP TABLE ref AS
SELECT n, a, b,
       (SELECT sum(x::float8 * y) FROM unnest(a, b) t(x, y)) AS dot,
       (SELECT sqrt(sum((x::float8 - y) ^ 2)) FROM unnest(a, b) t(x, y)) AS l2,
       (SELECT sum(x::float8 * y) / sqrt(sum(x::float8 * x) * sum(y::float8 * y)) FROM unnest(a, b) t(x, y)) AS cos
  FROM pairs;
-- float lanes: agreement to rounding (a relative 1e-5 of the magnitudes
-- summed), for the best kernels and for each this CPU runs
-- (maester.vector_kernels)
CREATE TEMP TABLE agree (kernels text, pairs int, dot_ok int, l2_ok int, cos_ok int);
CREATE FUNCTION pg_temp.agree(k text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM set_config('maester.vector_kernels', k, true);
  INSERT INTO agree
  SELECT k, count(*),
         count(*) FILTER (WHERE abs(maester.inner_product(a, b) - dot) <= 1e-5 * (1 + sqrt(n))),
         count(*) FILTER (WHERE abs(maester.l2_distance(a, b) - l2) <= 1e-5 * (1 + l2)),
         count(*) FILTER (WHERE abs(maester.cosine_similarity(a, b) - cos) <= 1e-5)
    FROM ref;
EXCEPTION WHEN invalid_parameter_value THEN NULL;   -- not on this CPU
END $$;
SELECT pg_temp.agree(k) FROM unnest(ARRAY['auto', 'scalar', 'avx2', 'avx512', 'neon']) k;
SELECT count(*) FILTER (WHERE kernels IN ('auto', 'scalar')) AS always_run,
       bool_and(pairs = 74 AND dot_ok = 74 AND l2_ok = 74 AND cos_ok = 74) AS all_agree
  FROM agree;
SELECT pg_temp.err($$ SET maester.vector_kernels = 'sse9' $$);
-- exact on exact values
SELECT maester.inner_product('{1,2,3}', '{4,5,6}') AS dot, maester.l2_distance('{0,0}', '{3,4}') AS l2,
       maester.cosine_similarity('{1,0}', '{0,1}') AS orthogonal, maester.cosine_similarity('{2,2}', '{1,1}') AS same,
       maester.cosine_similarity('{1,1}', '{-1,-1}') AS opposite;
-- strict about NULLs and shapes
SELECT maester.inner_product(NULL, '{1}') AS null_arg, maester.cosine_similarity('{0,0}', '{1,1}') AS zero_norm;
SELECT pg_temp.err($$ SELECT maester.inner_product('{1,2,3}', '{1,2}') $$);
SELECT pg_temp.err($$ SELECT maester.l2_distance('{1,NULL}', '{1,2}') $$);
SELECT pg_temp.err($$ SELECT maester.cosine_similarity('{}', '{}') $$);
SELECT pg_temp.err($$ SELECT maester.inner_product('{{1,2},{3,4}}', '{{1,2},{3,4}}') $$);
SELECT p.proname FROM pg_proc p
 WHERE p.pronamespace = 'maester'::regnamespace
   AND p.proname IN ('inner_product', 'cosine_similarity', 'l2_distance', 'embed')
   AND obj_description(p.oid, 'pg_proc') IS NULL;

-- The same render and hash as maester.prompt_render, in PL/pgSQL, for the
-- benchmark's comparison: resolve the version (or latest), replace each
-- {var} (strings as they are, other JSON as its text), unescape {{ }},
-- SHA-256 the result.
CREATE FUNCTION bench_plpgsql_render(p_name text, p_vars jsonb DEFAULT '{}',
                                     p_version text DEFAULT NULL)
RETURNS maester.rendered_prompt
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v   maester.prompt_version;
    out text;
    k   text;
    val jsonb;
    r   maester.rendered_prompt;
BEGIN
    SELECT pv.* INTO v FROM maester.prompt_version pv
     WHERE pv.name = p_name
       AND pv.version = COALESCE(p_version,
             (SELECT l.version FROM maester.prompt_version l
               WHERE l.name = p_name ORDER BY l.seq DESC LIMIT 1));
    IF NOT FOUND THEN
        RAISE EXCEPTION 'prompt "%" not found', p_name USING ERRCODE = 'undefined_object';
    END IF;
    out := replace(replace(v.template, '{{', chr(1)), '}}', chr(2));
    FOREACH k IN ARRAY v.variables LOOP
        val := p_vars -> k;
        IF val IS NULL OR jsonb_typeof(val) = 'null' THEN
            RAISE EXCEPTION 'missing variable "%"', k USING ERRCODE = 'invalid_parameter_value';
        END IF;
        out := replace(out, '{' || k || '}',
                       CASE jsonb_typeof(val) WHEN 'string' THEN p_vars ->> k ELSE val::text END);
    END LOOP;
    out := replace(replace(out, chr(1), '{'), chr(2), '}');
    r := ROW(v.name, v.version, out, NULL,
             encode(sha256(convert_to(out, 'UTF8')), 'hex'), v.template_hash, NULL);
    RETURN r;
END
$$;

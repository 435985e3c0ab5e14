-- src/sql/functions/98_privileges.sql: Privileges: nothing for PUBLIC; what each role may do.
--
-- Re-created: this file runs when the extension is created and again at
-- every update (CREATE FUNCTION, CREATE VIEW and CREATE TRIGGER then become
-- CREATE OR REPLACE); see src/sql/README.

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA maester FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA maester FROM PUBLIC;

GRANT SELECT ON maester.prompt_versions TO maester_reader;

GRANT SELECT ON maester.prompt, maester.prompt_version, maester.prompt_label TO maester_user;
GRANT EXECUTE ON FUNCTION maester.prompt_render(text, jsonb, text, text),
                          maester.template_variables(text),
                          maester.check_name(text, text) TO maester_user;

GRANT SELECT ON maester.prompt_label_history TO maester_admin;
GRANT INSERT, UPDATE (description) ON maester.prompt TO maester_admin;
GRANT INSERT ON maester.prompt_version TO maester_admin;
GRANT INSERT, UPDATE, DELETE ON maester.prompt_label TO maester_admin;
GRANT INSERT ON maester.prompt_label_history TO maester_admin;
GRANT EXECUTE ON FUNCTION
    maester.prompt_register(text, text, text, text, jsonb, jsonb, text, jsonb),
    maester.prompt_set_label(text, text, text),
    maester.prompt_unset_label(text, text) TO maester_admin;

GRANT EXECUTE ON FUNCTION
    maester.llm_generate(text, text, integer, text, text, jsonb, text, jsonb, jsonb),
    maester.generate_batch(jsonb[], integer, text, text, jsonb, boolean),
    maester.submit(jsonb, regproc, text),
    maester.cancel_job(bigint),
    maester.complete(jsonb),
    maester.evaluate(text, jsonb, jsonb),
    maester.validate_checks(jsonb),
    maester.embed(text[], text, jsonb), maester.embed(text, text, jsonb) TO maester_user;
GRANT SELECT ON maester.circuit TO maester_reader;
GRANT SELECT ON maester.price TO maester_reader, maester_user;
GRANT SELECT ON maester.usage TO maester_reader, maester_user, maester_admin;
GRANT SELECT ON maester.cost_daily, maester.cost_by_prompt_version TO maester_reader, maester_user, maester_admin;
GRANT EXECUTE ON FUNCTION maester.usage_retention(interval) TO maester_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON maester.budget TO maester_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON maester.eval_suite, maester.eval_case TO maester_admin;
GRANT SELECT ON maester.eval_suite, maester.eval_case, maester.eval_run, maester.eval_result
    TO maester_user, maester_reader;
GRANT DELETE ON maester.eval_run, maester.eval_result TO maester_admin;
GRANT EXECUTE ON FUNCTION maester.eval_run(text, text, text, integer),
    maester.eval_run_calls(text, text, text, integer), maester.replay(uuid) TO maester_user;
GRANT EXECUTE ON FUNCTION maester.eval_compare(bigint, bigint) TO maester_user, maester_reader;
GRANT SELECT ON maester.capture TO maester_user, maester_reader;
GRANT SELECT, DELETE ON maester.capture TO maester_admin;
GRANT SELECT ON maester.span, maester.trace TO maester_user, maester_reader, maester_admin;
GRANT DELETE ON maester.span TO maester_admin;
GRANT EXECUTE ON FUNCTION maester.explain(text) TO maester_user, maester_reader, maester_admin;
GRANT EXECUTE ON FUNCTION maester.trace_retention(interval) TO maester_admin;
GRANT EXECUTE ON FUNCTION maester.trace_status() TO maester_reader, maester_admin;
GRANT EXECUTE ON FUNCTION maester.otlp_payload(bigint, integer) TO maester_reader, maester_admin;
GRANT SELECT ON maester.stat TO maester_reader, maester_admin;
GRANT SELECT ON maester.job, maester.job_progress TO maester_user, maester_reader, maester_admin;
GRANT DELETE ON maester.job TO maester_admin;
GRANT EXECUTE ON FUNCTION maester.cancel_job(bigint) TO maester_admin;
GRANT EXECUTE ON FUNCTION maester.job_retention(interval) TO maester_admin;
GRANT EXECUTE ON FUNCTION maester.stat_entries() TO maester_reader, maester_admin;
GRANT EXECUTE ON FUNCTION maester.stat_reset() TO maester_admin;
GRANT SELECT ON maester.budget TO maester_reader;
GRANT SELECT ON maester.budget_status TO maester_reader, maester_admin;
GRANT EXECUTE ON FUNCTION maester.budget_counters() TO maester_reader, maester_admin;
GRANT DELETE ON maester.usage TO maester_admin;
GRANT INSERT ON maester.price TO maester_admin;
GRANT EXECUTE ON FUNCTION
    maester.price_at(text, timestamptz),
    maester.cost_exact(text, bigint, bigint, bigint, bigint, timestamptz),
    maester.cost_of(text, bigint, bigint, bigint, timestamptz, bigint)
    TO maester_reader, maester_user;
GRANT EXECUTE ON FUNCTION maester.circuit_status() TO maester_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON maester.provider, maester.model,
    maester.route, maester.route_target TO maester_admin;
GRANT EXECUTE ON FUNCTION maester.circuit_reset(text, text) TO maester_admin;
GRANT SELECT, DELETE ON maester.dead_letter TO maester_admin;
GRANT EXECUTE ON FUNCTION maester.worker_status() TO maester_reader, maester_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON maester.tenant_member TO maester_admin;
GRANT SELECT ON maester.tenant_member TO maester_user, maester_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON maester.tenant_limit TO maester_admin;
GRANT SELECT ON maester.tenant_limit TO maester_user, maester_reader;
GRANT EXECUTE ON FUNCTION maester.current_tenant() TO maester_reader, maester_user, maester_admin;
GRANT SELECT ON maester.budget, maester.budget_status TO maester_user;
GRANT EXECUTE ON FUNCTION maester.budget_counters() TO maester_user;
GRANT EXECUTE ON FUNCTION maester.price_key(text, timestamptz), maester.model_identity(text)
    TO maester_reader, maester_user;
GRANT SELECT, INSERT, DELETE ON maester.shipped_removed TO maester_admin;
GRANT EXECUTE ON FUNCTION maester.inner_product(real[], real[]),
    maester.cosine_similarity(real[], real[]), maester.l2_distance(real[], real[])
    TO maester_user, maester_reader, maester_admin;
GRANT SELECT ON maester.embedding_cache TO maester_user, maester_reader;
GRANT SELECT, DELETE ON maester.embedding_cache TO maester_admin;
GRANT SELECT ON maester.kb, maester.embedding_profile, maester.document, maester.chunk,
    maester.chunk_embedding, maester.kb_source, maester.kb_status
    TO maester_user, maester_reader, maester_admin;
GRANT EXECUTE ON FUNCTION
    maester.kb_create(text, text, jsonb, regconfig, integer, text, text),
    maester.ingest(text, text, text, text, text, jsonb),
    maester.ingest(text, text, bytea, text, text, jsonb),
    maester.kb_sync(text, regclass, name, name, name, name[], text),
    maester.kb_unsync(text, regclass, boolean),
    maester.kb_delete_document(text, text),
    maester.kb_drop(text),
    maester.kb_retry(text),
    maester.kb_reindex(text, text, integer, text, text, boolean),
    maester.kb_wait(text, interval) TO maester_user;
GRANT EXECUTE ON FUNCTION maester.kb_price(text) TO maester_user, maester_reader;
GRANT EXECUTE ON FUNCTION maester.search(text, text, integer, text, jsonb, jsonb) TO maester_user;
GRANT EXECUTE ON FUNCTION maester.kb_retention(text, interval) TO maester_user;
GRANT SELECT ON maester.response_cache TO maester_user, maester_reader;
GRANT DELETE ON maester.response_cache TO maester_user;
GRANT SELECT, DELETE ON maester.response_cache TO maester_admin;
GRANT SELECT ON maester.cache_stats TO maester_user, maester_reader, maester_admin;
GRANT EXECUTE ON FUNCTION maester.response_cache_invalidate(text, text, interval) TO maester_user, maester_admin;
GRANT EXECUTE ON FUNCTION maester.prompt_set_rollout(text, text, jsonb) TO maester_admin;
GRANT EXECUTE ON FUNCTION maester.rollout_compare(text, text, timestamptz) TO maester_user, maester_admin;

-- src/sql/functions/99_dump.sql: What pg_dump keeps: the configuration tables and their sequences.
--
-- Re-created: this file runs when the extension is created and again at
-- every update (CREATE FUNCTION, CREATE VIEW and CREATE TRIGGER then become
-- CREATE OR REPLACE); see src/sql/README.

SELECT pg_catalog.pg_extension_config_dump('maester.prompt', '');
SELECT pg_catalog.pg_extension_config_dump('maester.prompt_version', '');
SELECT pg_catalog.pg_extension_config_dump('maester.prompt_label', '');
SELECT pg_catalog.pg_extension_config_dump('maester.prompt_label_history', '');
SELECT pg_catalog.pg_extension_config_dump('maester.prompt_version_seq_seq', '');
SELECT pg_catalog.pg_extension_config_dump('maester.prompt_label_history_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('maester.provider', 'WHERE NOT shipped');
SELECT pg_catalog.pg_extension_config_dump('maester.model', 'WHERE NOT shipped');
SELECT pg_catalog.pg_extension_config_dump('maester.route', 'WHERE NOT shipped');
SELECT pg_catalog.pg_extension_config_dump('maester.route_target', 'WHERE NOT shipped');
SELECT pg_catalog.pg_extension_config_dump('maester.price', 'WHERE NOT shipped');
SELECT pg_catalog.pg_extension_config_dump('maester.usage', '');
SELECT pg_catalog.pg_extension_config_dump('maester.budget', '');
SELECT pg_catalog.pg_extension_config_dump('maester.budget_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('maester.eval_suite', '');
SELECT pg_catalog.pg_extension_config_dump('maester.eval_case', '');
SELECT pg_catalog.pg_extension_config_dump('maester.eval_run', '');
SELECT pg_catalog.pg_extension_config_dump('maester.eval_run_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('maester.eval_result', '');
SELECT pg_catalog.pg_extension_config_dump('maester.capture', '');
SELECT pg_catalog.pg_extension_config_dump('maester.span', '');
SELECT pg_catalog.pg_extension_config_dump('maester.job', '');
SELECT pg_catalog.pg_extension_config_dump('maester.job_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('maester.dead_letter', '');
SELECT pg_catalog.pg_extension_config_dump('maester.dead_letter_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('maester.tenant_member', '');
SELECT pg_catalog.pg_extension_config_dump('maester.tenant_limit', '');
SELECT pg_catalog.pg_extension_config_dump('maester.span_seq_seq', '');
SELECT pg_catalog.pg_extension_config_dump('maester.shipped_removed', '');
SELECT pg_catalog.pg_extension_config_dump('maester.embedding_profile', '');
SELECT pg_catalog.pg_extension_config_dump('maester.embedding_profile_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('maester.kb', '');
SELECT pg_catalog.pg_extension_config_dump('maester.kb_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('maester.document', '');
SELECT pg_catalog.pg_extension_config_dump('maester.document_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('maester.chunk', '');
SELECT pg_catalog.pg_extension_config_dump('maester.chunk_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('maester.chunk_embedding', '');
SELECT pg_catalog.pg_extension_config_dump('maester.kb_source', '');
SELECT pg_catalog.pg_extension_config_dump('maester.kb_eval_run', '');
SELECT pg_catalog.pg_extension_config_dump('maester.kb_eval_run_id_seq', '');

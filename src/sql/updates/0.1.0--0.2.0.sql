-- src/sql/updates/0.1.0--0.2.0.sql: what changes in the written-once objects
-- (tables, types, seeds, policies) from 0.1.0 to 0.2.0.
--
-- Runs before the re-created files (src/sql/functions/), in the catalog of
-- 0.1.0: it may use built-in functions only, never maester's own (those of
-- this version do not exist yet, and a chained update never creates those
-- of the versions in between).  See src/sql/README for the rules.

-- (no change to written-once objects yet)

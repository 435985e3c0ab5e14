-- maester demo: the prompt registry of the first article, in SQL.
\pset footer off
\set ECHO queries
CREATE EXTENSION maester;

-- Register system_summary v1 and v2 (the articles' templates).
SELECT name, version, variables, template_hash
  FROM maester.prompt_register('system_summary',
         E'You are a production AI assistant.\nSummarize the following system event clearly:\n\n{event_text}',
         version => 'v1');
SELECT name, version, variables, template_hash
  FROM maester.prompt_register('system_summary',
         E'You are a production AI assistant focused on reliability.\nSummarize the following system event.\nBe concise, mention operational impact, and keep the tone factual.\n\n{event_text}',
         version => 'v2');

-- Deploy scripts re-run: registering the same content again creates nothing.
SELECT version, seq FROM maester.prompt_register('system_summary',
         E'You are a production AI assistant focused on reliability.\nSummarize the following system event.\nBe concise, mention operational impact, and keep the tone factual.\n\n{event_text}');

-- Render v1, as in the article's first request.
SELECT name, version, hash, content
  FROM maester.prompt_render('system_summary',
         '{"event_text": "Admin revoked API key for user account 742."}', 'v1');

-- Render without a version: latest, which is v2.
SELECT name, version, hash, content
  FROM maester.prompt_render('system_summary',
         '{"event_text": "System latency increased above 300ms for the inference service."}');

-- Labels: production stays on v1 until someone moves it.
SELECT name, label, version FROM maester.prompt_set_label('system_summary', 'production', 'v1');
SELECT version, hash
  FROM maester.prompt_render('system_summary',
         '{"event_text": "Admin revoked API key for user account 742."}', 'production');

SELECT name, version, labels, variables, left(template_hash, 16) AS template_hash
  FROM maester.prompt_versions ORDER BY seq;

# pg_dump keeps the registry: versions, labels, history and sequences come
# back when restored with session_replication_role = replica (so that the
# registry's triggers do not fire on restored rows), and the restored
# registry works.  The gateway's configuration comes back as it was, edits
# and deletions of the shipped rows included.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'maester'");
$node->start;
$node->safe_psql('postgres', q{
	CREATE DATABASE src;
	CREATE ROLE dump_app LOGIN;
});
$node->safe_psql('src', q{
	CREATE EXTENSION maester;
	SELECT maester.prompt_register('p', 'one {x}');
	SELECT maester.prompt_register('p', 'two {x}', system_template => 'sys {y}');
	SELECT maester.prompt_set_label('p', 'production', 'v1');
	SELECT maester.prompt_set_label('p', 'production', 'v2');
	SELECT maester.prompt_register('other', 'x', version => 'beta');
	INSERT INTO maester.tenant_member (role, tenant) VALUES ('dump_app', 'acme');
	INSERT INTO maester.span (trace_id, span_id, name, started_at, duration_us, status, tenant)
	SELECT 't' || i, 's', 'llm_generate', now(), 1, 'ok', 'acme' FROM generate_series(1, 5) i;

	-- the shipped configuration, edited: openai disabled and pointed at a
	-- proxy, the default route rewritten, anthropic deleted
	UPDATE maester.provider SET enabled = false, base_url = 'https://llm-proxy.internal.example/v1'
	 WHERE name = 'openai';
	UPDATE maester.route SET description = 'ours' WHERE name = 'default';
	UPDATE maester.route_target SET model = 'gpt-4.1' WHERE route = 'default' AND position = 1;
	-- (an edited shipped row deleted: CREATE EXTENSION ships its key again)
	UPDATE maester.route_target SET model = 'claude-sonnet-4-5' WHERE route = 'default' AND position = 2;
	DELETE FROM maester.route_target WHERE route = 'default' AND position = 2;
	DELETE FROM maester.provider WHERE name = 'anthropic';
	INSERT INTO maester.provider (name, kind, base_url, models)
	VALUES ('local', 'openai_compatible', 'https://llm.internal.example/v1', '{llama%}');
	INSERT INTO maester.route_target (route, position, provider, model) VALUES ('default', 3, 'local', 'llama3.2');
	INSERT INTO maester.route (name) VALUES ('cheap');
	INSERT INTO maester.route_target (route, position, provider, model) VALUES ('cheap', 1, 'local', 'llama3.2:3b');
	-- a price an admin adds with a vendor's source is theirs
	INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million, source)
	VALUES ('gpt-5', '2025-08-07', 1.25, 10, 'openai.com/api/pricing');

	-- a knowledge base: an indexed document with its chunk and vector, and
	-- a table kept in sync (its documents wait: nothing answers here)
	SET maester.tenant = 'acme';
	SELECT maester.kb_create('kb', 'llama-embed', dimensions => 4);
	RESET maester.tenant;
	INSERT INTO maester.document (kb_id, tenant, external_id, version, content_hash, mime, content, parsed, stage, current,
	                              trace_id, span_id)
	SELECT id, 'acme', 'doc-1', 1, 'h', 'text/plain', 'Vacuum reclaims storage.', 'Vacuum reclaims storage.', 'indexed', true,
	       '0af7651916cd43dd8448eb211c80319c', 'b7ad6b7169203331'
	  FROM maester.kb;
	INSERT INTO maester.chunk (document_id, kb_id, tenant, seq, start_offset, end_offset, token_estimate, content,
	                           content_hash, fts_config)
	SELECT d.id, d.kb_id, 'acme', 1, 0, 24, 6, 'Vacuum reclaims storage.', '\x00', 'english' FROM maester.document d;
	INSERT INTO maester.chunk_embedding (profile_id, chunk_id, kb_id, document_id, live, tenant, embedding)
	SELECT k.profile_id, c.id, k.id, c.document_id, true, 'acme', '{0.5,0.5,0.5,0.5}' FROM maester.kb k, maester.chunk c;
	CREATE TABLE notes (id int PRIMARY KEY, body text);
	INSERT INTO notes VALUES (1, 'A note on indexes.');
	SET maester.tenant = 'acme';
	SELECT maester.kb_sync('kb', 'notes', 'id', 'body');
	RESET maester.tenant;
});

# The knowledge worker chunks the synced note in the background (its
# embedding then waits: nothing answers here), and chunking raises
# kb.max_source_bytes: the snapshot is taken once that is done, so that
# what it compares does not move under it.
$node->poll_query_until('src', q{SELECT stage IN ('chunked', 'embedded', 'indexed', 'failed')
	FROM maester.document WHERE external_id = '1'})
  or die 'the synced note was never chunked';
is($node->safe_psql('src', q{SELECT max_source_bytes > 0 FROM maester.kb}), 't',
	'chunking the note counted its bytes (the dump must carry them)');

# the configuration tables, every row and column
my $q_config = q{SELECT string_agg(r, E'\n' ORDER BY r) FROM (
	SELECT 'provider ' || to_jsonb(t)::text AS r FROM maester.provider t
	UNION ALL SELECT 'model ' || to_jsonb(t)::text FROM maester.model t
	UNION ALL SELECT 'route ' || to_jsonb(t)::text FROM maester.route t
	UNION ALL SELECT 'route_target ' || to_jsonb(t)::text FROM maester.route_target t
	UNION ALL SELECT 'price ' || to_jsonb(t)::text FROM maester.price t
	UNION ALL SELECT 'shipped_removed ' || to_jsonb(t)::text FROM maester.shipped_removed t
	UNION ALL SELECT 'kb ' || (to_jsonb(t) - 'paused_reason' - 'paused_until' - 'pauses')::text FROM maester.kb t
	UNION ALL SELECT 'embedding_profile ' || to_jsonb(t)::text FROM maester.embedding_profile t
	UNION ALL SELECT 'document ' || (to_jsonb(t) - 'stage' - 'updated_at' - 'parsed' - 'attempts'
	                                 - 'next_attempt_at' - 'error_class' - 'error_message')::text FROM maester.document t
	UNION ALL SELECT 'chunk ' || to_jsonb(t)::text FROM maester.chunk t WHERE t.kb_id IS NOT NULL AND t.seq = 1
	                                                                    AND t.content = 'Vacuum reclaims storage.'
	UNION ALL SELECT 'chunk_embedding ' || to_jsonb(t)::text FROM maester.chunk_embedding t
	UNION ALL SELECT 'kb_source ' || to_jsonb(t)::text FROM maester.kb_source t) s};
my $before_c = $node->safe_psql('src', $q_config);
like($before_c, qr/"name": "openai".*"shipped": false/, 'the edited openai row is no longer marked shipped');

my $q_versions = q{SELECT string_agg(format('%s/%s/%s/%s', name, version, labels, template_hash), ';' ORDER BY seq)
	FROM maester.prompt_versions};
my $q_history = q{SELECT string_agg(format('%s/%s/%s/%s', name, label, from_version, to_version), ';' ORDER BY id)
	FROM maester.prompt_label_history};
my $before_v = $node->safe_psql('src', $q_versions);
my $before_h = $node->safe_psql('src', $q_history);

my $dump = $node->basedir . '/src.dump';
$node->command_ok(
	[ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('src') ],
	'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE dst');
{
	local $ENV{PGOPTIONS} = '-c session_replication_role=replica';
	$node->command_ok(
		[ 'pg_restore', '--exit-on-error', '-d', $node->connstr('dst'), $dump ],
		'pg_restore with session_replication_role = replica');
}

# without session_replication_role = replica the restore fails, and says
# which setting it needs
$node->safe_psql('postgres', 'CREATE DATABASE dst_plain');
{
	my @cmd = ('pg_restore', '--exit-on-error', '-d', $node->connstr('dst_plain'), $dump);
	my ($stdout, $stderr) = ('', '');
	IPC::Run::run(\@cmd, '>', \$stdout, '2>', \$stderr);
	like($stderr, qr/session_replication_role = replica/,
		'a restore without session_replication_role = replica names the setting');
}

is($node->safe_psql('dst', $q_versions), $before_v, 'versions and labels restored');
is($node->safe_psql('dst', $q_config), $before_c,
	'providers, models, routes, targets, prices and deletions of shipped rows restored as they were');
is($node->safe_psql('dst', q{SELECT base_url || ' ' || enabled FROM maester.provider WHERE name = 'openai'}),
	'https://llm-proxy.internal.example/v1 false', 'the disabled openai provider keeps its proxy');
is($node->safe_psql('dst', q{SELECT count(*) FROM maester.provider WHERE name = 'anthropic'}),
	'0', 'the deleted anthropic provider stays deleted');
# and a second round trip changes nothing
my $dump2 = $node->basedir . '/dst.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump2, '-d', $node->connstr('dst') ], 'pg_dump of the restored database');
$node->safe_psql('postgres', 'CREATE DATABASE dst2');
{
	local $ENV{PGOPTIONS} = '-c session_replication_role=replica';
	$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('dst2'), $dump2 ],
		'pg_restore of the restored database');
}
is($node->safe_psql('dst2', $q_config), $before_c, 'a second round trip keeps the configuration');
is($node->safe_psql('dst', $q_history), $before_h, 'label history restored');
is($node->safe_psql('dst', q{SELECT role::text || '/' || tenant FROM maester.tenant_member}),
	'dump_app/acme', 'tenant mappings restored');
# spans written after the restore come after the restored ones (the OTLP
# exporter reads by seq)
$node->safe_psql('dst', q{INSERT INTO maester.span (trace_id, span_id, name, started_at, duration_us, status, tenant)
	VALUES ('after', 's', 'llm_generate', now(), 1, 'ok', 'acme')});
is($node->safe_psql('dst', q{SELECT (SELECT seq FROM maester.span WHERE trace_id = 'after') >
	(SELECT max(seq) FROM maester.span WHERE trace_id <> 'after')}), 't',
	'span_seq_seq restored: a new span comes after the restored ones');
is($node->safe_psql('dst',
	q{SELECT content || '|' || system FROM maester.prompt_render('p', '{"x": 1, "y": 2}', 'production')}),
	'two 1|sys 2', 'restored registry renders');

# registration continues where it stopped: next vN, seq after the old ones
is($node->safe_psql('dst',
	q{SELECT version FROM maester.prompt_register('p', 'three {x}')}),
	'v3', 'next version after restore');
is($node->safe_psql('dst',
	q{SELECT string_agg(version, ',' ORDER BY seq) FROM maester.prompt_version WHERE name = 'p'}),
	'v1,v2,v3', 'registration order kept');
is($node->safe_psql('dst',
	q{SELECT version FROM maester.prompt_render('p', '{"x": 1, "y": 2}')}),
	'v3', 'latest follows the new registration');
$node->safe_psql('dst', q{SELECT maester.prompt_set_label('p', 'production', 'v3')});
is($node->safe_psql('dst',
	q{SELECT count(*) FROM maester.prompt_label_history WHERE name = 'p'}),
	$node->safe_psql('src', q{SELECT count(*) + 1 FROM maester.prompt_label_history WHERE name = 'p'}),
	'history continues');

# a kept table's triggers work in the restored database
$node->safe_psql('dst', q{INSERT INTO notes VALUES (2, 'A second note.')});
is($node->safe_psql('dst', q{SELECT string_agg(external_id, ',' ORDER BY external_id) FROM maester.document
	WHERE source = 'notes'::regclass}), '1,2', 'a kept table stays in sync after a restore');

$node->stop;
done_testing();

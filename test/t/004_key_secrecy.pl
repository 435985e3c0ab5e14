# API keys never leak: not into the server log (log_statement = all,
# log_min_messages = debug5), not into errors (even when the upstream
# echoes the request headers back), not into tables, settings or
# pg_stat_activity.  And without shared_preload_libraries the gateway
# refuses with 55000 while the registry still works.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MaesterMock;

my $key = 'sk-secret-' . join('', map { sprintf('%02x', int(rand(256))) } 1 .. 12);
my $mock = MaesterMock->start('--api-key', $key);
my $url = $mock->url;

local $ENV{MAESTER_SECRET_API_KEY} = $key;
my $node = PostgreSQL::Test::Cluster->new('secrets');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
maester.allow_insecure_hosts = '127.0.0.1'
});
$node->start;
# (set after start: at DEBUG3, PostgreSQL's postmaster itself prints its
# whole environment, keys included, once at startup -- see the README)
$node->append_conf('postgresql.conf', qq{
log_statement = all
log_min_messages = debug5
log_min_error_statement = debug5
log_error_verbosity = verbose
maester.log_routing = log
});
$node->reload;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION maester;
	INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, circuit_failure_threshold, priority)
	VALUES ('mock', 'openai_compatible', '$url/v1', 'MAESTER_SECRET_API_KEY', '{mock-%,fault-%}', 0, 1),
	       ('mockanth', 'anthropic', '$url', 'MAESTER_SECRET_API_KEY', '{claude-%}', 0, 1);
});

# calls that succeed, with both kinds of provider
is($node->safe_psql('postgres', q{SELECT provider FROM maester.llm_generate('hello', 'mock-1')}),
	'mock', 'OpenAI-style call with the key works');
is($node->safe_psql('postgres', q{SELECT provider FROM maester.llm_generate('hello', 'claude-x')}),
	'mockanth', 'Anthropic-style call with the key works');
my $seen = $mock->get('/_mock/requests');
is($seen->[0]{headers}{authorization}, "Bearer $key", 'the key reached the upstream as a bearer token');
is($seen->[1]{headers}{'x-api-key'}, $key, 'the key reached the upstream as x-api-key');

# an upstream that echoes the request headers in its error body
my ($ret, $out, $err) = $node->psql('postgres',
	q{SELECT maester.llm_generate('hello', 'fault-echo-headers')});
isnt($ret, 0, 'the echo call fails');
like($err, qr/Authorization: Bearer \*+/i, 'the echoed key is masked in the error');
unlike($err, qr/\Q$key\E/, 'the key is not in the error');
# the same through Anthropic's header
$node->safe_psql('postgres', q{INSERT INTO maester.model VALUES ('anth-echo', 'mockanth', 'fault-echo-headers')});
($ret, $out, $err) = $node->psql('postgres', q{SELECT maester.llm_generate('hello', 'anth-echo')});
like($err, qr/x-api-key: \*+/i, 'the echoed x-api-key is masked in the error');
unlike($err, qr/\Q$key\E/, 'the key is not in the Anthropic error');

# other failures, for the log: 401 with a wrong key, timeouts
$node->safe_psql('postgres', q{
	INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, circuit_failure_threshold)
	VALUES ('badkey', 'openai_compatible', 'http://127.0.0.1:1/v1', 'MAESTER_SECRET_API_KEY', '{bad-%}', 0)});
$node->psql('postgres', q{SELECT maester.llm_generate('hello', 'bad-1')});
$node->psql('postgres', q{SELECT maester.llm_generate('hello', 'fault-hang', options => '{"timeout_ms": 200}')});

# nowhere in SQL-visible state
my $state = $node->safe_psql('postgres', q{
	SELECT string_agg(x, ' ') FROM (
	  SELECT name || '=' || setting AS x FROM pg_settings
	  UNION ALL SELECT query FROM pg_stat_activity WHERE query IS NOT NULL
	  UNION ALL SELECT row_to_json(p)::text FROM maester.provider p) s});
unlike($state, qr/\Q$key\E/, 'the key is in no setting, activity row or table');
# a non-superuser cannot see the egress setting
$node->safe_psql('postgres', 'CREATE ROLE plain LOGIN');
($ret, $out, $err) = $node->psql('postgres', 'SHOW maester.allow_insecure_hosts', extra_params => [ '-U', 'plain' ]);
like($err, qr/must be superuser|permission denied/, 'maester.allow_insecure_hosts is hidden from non-superusers');

my $log = slurp_file($node->logfile);
like($log, qr/model_routed requested_model=mock-1 selected_provider=mock/, 'the routing line is logged');
like($log, qr/fault-echo-headers/, 'the failing statements are logged');
unlike($log, qr/\Q$key\E/, 'the key is nowhere in the server log (debug5, log_statement = all)');
$node->stop;

# without shared_preload_libraries
my $plain = PostgreSQL::Test::Cluster->new('nopreload');
$plain->init;
$plain->start;
$plain->safe_psql('postgres', q{
	CREATE EXTENSION maester;
	SELECT maester.prompt_register('p', 'Hi {x}')});
is($plain->safe_psql('postgres', q{SELECT content FROM maester.prompt_render('p', '{"x": 1}')}),
	'Hi 1', 'the registry works without preloading');
($ret, $out, $err) = $plain->psql('postgres', q{SELECT maester.llm_generate('x', 'gpt-4.1-mini')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/55000.*shared_preload_libraries/s, 'the gateway needs shared_preload_libraries (55000)');
$plain->stop;
$mock->stop;
done_testing();

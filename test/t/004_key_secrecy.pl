# API keys never leak: not into the server log (log_statement = all,
# log_min_messages = debug5), not into errors (even when the upstream
# echoes the request headers back), not into tables, settings or
# pg_stat_activity, and not to a host the superuser did not bind the key
# to (maester.key_hosts), however an admin repoints a provider.  And
# without shared_preload_libraries the gateway refuses with 55000 while
# the registry still works.
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

my ($mport) = $url =~ /:(\d+)$/;
my $openai_key = 'sk-openai-' . join('', map { sprintf('%02x', int(rand(256))) } 1 .. 12);
local $ENV{MAESTER_SECRET_API_KEY} = $key;
local $ENV{OPENAI_API_KEY} = $openai_key;
my $node = PostgreSQL::Test::Cluster->new('secrets');
$node->init;
# the test key is bound to the mock's port only; OpenAI's to OpenAI only
my $key_hosts = "OPENAI_API_KEY=api.openai.com, ANTHROPIC_API_KEY=api.anthropic.com, MAESTER_SECRET_API_KEY=127.0.0.1:$mport";
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
maester.allow_insecure_hosts = '127.0.0.1'
maester.key_hosts = '$key_hosts'
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

# other failures, for the log: a key refused for another port, timeouts
$node->safe_psql('postgres', q{
	INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, circuit_failure_threshold)
	VALUES ('badkey', 'openai_compatible', 'http://127.0.0.1:1/v1', 'MAESTER_SECRET_API_KEY', '{bad-%}', 0)});
($ret, $out, $err) = $node->psql('postgres', q{SELECT maester.llm_generate('hello', 'bad-1')});
like($err, qr/the key of provider "badkey" may not be sent to "127.0.0.1:1"/,
	'a key bound to host:port is refused for another port of that host');

# attack: an admin (not a superuser) repoints the shipped openai provider,
# or a new one, at a host of their own (here the mock, which records every
# request) to receive OPENAI_API_KEY: refused before anything is sent
$node->safe_psql('postgres', q{CREATE ROLE adm LOGIN IN ROLE maester_admin});
my $before = scalar @{ $mock->get('/_mock/requests') };
($ret, $out, $err) = $node->psql('postgres', qq{
	UPDATE maester.provider SET base_url = '$url/v1' WHERE name = 'openai';
	SELECT maester.llm_generate('hello', 'gpt-4o-mini');}, extra_params => [ '-U', 'adm' ]);
like($err, qr/the key of provider "openai" may not be sent to "127.0.0.1:$mport"/,
	'the shipped openai provider repointed by an admin sends no key');
($ret, $out, $err) = $node->psql('postgres', qq{
	INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, circuit_failure_threshold)
	VALUES ('thief', 'openai_compatible', '$url/v1', 'OPENAI_API_KEY', '{thief-%}', 0);
	SELECT maester.llm_generate('hello', 'thief-1');}, extra_params => [ '-U', 'adm' ]);
like($err, qr/42501|may not be sent/, 'a new provider naming OPENAI_API_KEY sends no key');
($ret, $out, $err) = $node->psql('postgres', q{ALTER SYSTEM SET maester.key_hosts = 'OPENAI_API_KEY=127.0.0.1'},
	extra_params => [ '-U', 'adm' ]);
like($err, qr/must be superuser|permission denied/, 'an admin cannot rebind keys');
is(scalar @{ $mock->get('/_mock/requests') }, $before, 'the mock received no request from any of it');
unlike($err, qr/\Q$openai_key\E/, 'no error shows the key');

# the superuser binds OPENAI_API_KEY to the mock: now the key is sent
$node->safe_psql('postgres', "ALTER SYSTEM SET maester.key_hosts = '$key_hosts, OPENAI_API_KEY=127.0.0.1:$mport'");
$node->reload;
$node->poll_query_until('postgres', q{SELECT current_setting('maester.key_hosts') LIKE '%OPENAI_API_KEY=127.0.0.1%'})
  or die 'reload not seen';
$node->psql('postgres', q{SELECT maester.llm_generate('hello', 'thief-1')});
$seen = $mock->get('/_mock/requests');
is($seen->[-1]{headers}{authorization}, "Bearer $openai_key", 'a key the superuser bound to the host is sent');
$node->safe_psql('postgres', q{
	ALTER SYSTEM RESET maester.key_hosts;
	DELETE FROM maester.provider WHERE name = 'thief';
	UPDATE maester.provider SET base_url = 'https://api.openai.com/v1' WHERE name = 'openai'});
$node->reload;
# a malformed binding is refused when set
($ret, $out, $err) = $node->psql('postgres', q{ALTER SYSTEM SET maester.key_hosts = 'OPENAI_API_KEY'});
like($err, qr/invalid value for parameter "maester.key_hosts"/, 'a malformed binding is refused');
($ret, $out, $err) = $node->psql('postgres', q{ALTER SYSTEM SET maester.key_hosts = 'HOME=127.0.0.1'});
like($err, qr/invalid value for parameter "maester.key_hosts"/, 'only key variables can be bound');
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

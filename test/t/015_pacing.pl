# Rate limits that hold under attack (issue #14 review):
#  1. failing calls to made-up model names fill the shared table of
#     breakers and schedules (maester.max_providers); a tenant's limit must
#     still be kept (0.1.0's table kept failure-only entries for good, and
#     a limit that found no room went unpaced);
#  2. a tenant waiting for its own turn holds no place in the provider's
#     schedule: another tenant's call is not delayed by it.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MaesterMock;

my $mock = MaesterMock->start;
my $url = $mock->url;
my $node = PostgreSQL::Test::Cluster->new('pacing');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
maester.allow_insecure_hosts = '127.0.0.1'
maester.max_providers = 16
});
$node->start;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION maester;
	INSERT INTO maester.provider (name, kind, base_url, models, circuit_failure_threshold, max_attempts)
	VALUES ('mock', 'openai_compatible', '$url/open/v1', '{mock-%,fault-%}', 5, 1),
	       ('paced', 'openai_compatible', '$url/open/v1', '{paced-%}', 0, 1);
	CREATE ROLE t1 LOGIN IN ROLE maester_user;
	CREATE ROLE t2 LOGIN IN ROLE maester_user;
	CREATE ROLE t3 LOGIN IN ROLE maester_user;
	CREATE ROLE t4 LOGIN IN ROLE maester_user;
	INSERT INTO maester.tenant_member VALUES ('t1', 'one'), ('t2', 'two'), ('t3', 'three'), ('t4', 'four');
	INSERT INTO maester.tenant_limit (tenant, requests_per_minute) VALUES ('one', 2);
});

# 1. tenant three fills the table with failing made-up models
my $fill = $node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE error_class IS NOT NULL) FROM maester.generate_batch(
	    (SELECT array_agg(jsonb_build_object('prompt', 'x', 'model', 'fault-flaky-' || (1000 + g) || '-500'))
	       FROM generate_series(1, 40) g), concurrency => 8)},
	extra_params => [ '-U', 't3' ]);
is($fill, 40, 'forty failing calls to made-up models');
is($node->safe_psql('postgres', q{SELECT count(*) >= 14 FROM maester.circuit WHERE consecutive_failures > 0}),
	't', 'the shared table is full of failure counts');
# tenant one's limit (2 a minute: one every 30 s) is still kept
my ($ret, $out, $err) = $node->psql('postgres', q{
	SELECT (maester.llm_generate('hi', 'mock-1')).provider;
	SELECT (maester.llm_generate('hi', 'mock-1', options => '{"timeout_ms": 2000}')).provider},
	extra_params => [ '-U', 't1' ]);
like($err, qr/tenant "one"'s rate limit/, 'a full table does not drop a tenant\'s limit');

# 2. the provider paces at 60 a minute (one a second); tenant four (one a
# minute) starts ten calls, nine of which wait for its turn
$node->safe_psql('postgres', q{
	UPDATE maester.provider SET requests_per_minute = 60 WHERE name = 'paced';
	INSERT INTO maester.tenant_limit (tenant, requests_per_minute) VALUES ('four', 1)});
my $bg = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 't4' ]);
my $bgpid = $bg->query_safe('SELECT pg_backend_pid()');
$bg->query_safe('SELECT 1');
$bg->{stdin} .= q{SELECT count(*) FROM maester.generate_batch(
	(SELECT array_agg(jsonb_build_object('prompt', 'hi ' || g, 'model', 'paced-1')) FROM generate_series(1, 10) g),
	concurrency => 10, options => '{"timeout_ms": 600000}');
};
my $before = $mock->stats->{requests};
$bg->{run}->pump_nb;
ok($mock->wait_for(sub { $mock->stats->{requests} > $before }, 10), 'tenant four\'s first call went out');
sleep 1;
# tenant two: one place in the provider's schedule is a second away at most
($ret, $out, $err) = $node->psql('postgres',
	q{SELECT (maester.llm_generate('hello', 'paced-2', options => '{"timeout_ms": 4000}')).provider},
	extra_params => [ '-U', 't2' ]);
is($out, 'paced', 'a tenant waiting for its turn does not delay another tenant') or diag($err);
$node->safe_psql('postgres', "SELECT pg_cancel_backend($bgpid)");
$bg->quit;

$node->stop;
$mock->stop;
done_testing();

# generate_batch interrupted: a batch with many requests on the wire is
# stopped at once by query cancel and by pg_terminate_backend; every
# request that was in flight is settled in the ledger as cancelled, the
# requests not yet started never reach the ledger or the provider, and no
# connection stays open (the mock counts the stats request itself: <= 1).  The times are printed; the assertions only
# require "well under a second" so that a slow machine cannot flake.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use MaesterMock;

my $mock = MaesterMock->start;
my $node = PostgreSQL::Test::Cluster->new('batch');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
wal_level = replica
maester.allow_insecure_hosts = '127.0.0.1'
});
$node->start;
my $url = $mock->url;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION maester;
	INSERT INTO maester.provider (name, kind, base_url, models, circuit_failure_threshold, timeout_ms)
	VALUES ('mock', 'openai_compatible', '$url/open/v1', '{mock-%,fault-%}', 0, 60000);
	INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
	VALUES ('fault-hang', '2020-01-01', 1, 2), ('mock-1', '2020-01-01', 1, 2);
	INSERT INTO maester.model (name, provider, provider_model) VALUES ('hanging-grader', 'mock', 'fault-hang');
	SELECT maester.prompt_register('graded', 'Grade me: {i}',
	    checks => '[{"type": "llm_rubric", "value": "Fine.", "model": "hanging-grader"}]');
});

# 40 requests that the upstream never answers, 16 at a time
my $batch = q{SELECT count(*) FROM maester.generate_batch(ARRAY(
	SELECT jsonb_build_object('prompt', 'p' || i, 'model', 'fault-hang', 'max_tokens', 10,
	                          'options', '{"timeout_ms": 60000}'::jsonb)
	  FROM generate_series(1, 40) i), concurrency => 16);};

sub start_batch
{
	my $s = $node->background_psql('postgres', on_error_stop => 0);
	my $pid = $s->query_safe('SELECT pg_backend_pid()');
	$mock->get('/_mock/reset');
	$s->{stdin} .= "$batch\n";
	$s->{run}->pump_nb;
	ok($mock->wait_for(sub { $mock->stats->{requests} >= 16 }, 10),
		'16 requests reached the upstream');
	usleep(200_000);
	is($mock->stats->{requests}, 16, 'never more than the concurrency');
	return ($s, $pid);
}

sub wait_idle
{
	my ($pid, $t0) = @_;
	for (1 .. 1000)
	{
		my $st = $node->safe_psql('postgres',
			"SELECT coalesce((SELECT state FROM pg_stat_activity WHERE pid = $pid), 'gone')");
		return time - $t0 if $st ne 'active';
		usleep(2_000);
	}
	return 999;
}

sub ledger_of
{
	my ($pid) = @_;
	# the cancelled settlements are queued without waiting: let the worker write them
	$node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM maester.usage WHERE backend_pid = $pid AND status = 'pending'")
	  or diag('pending rows left');
	return $node->safe_psql('postgres',
		"SELECT status || ' ' || error_class || ' ' || count(*) || ' ' || bool_and(cost_usd = estimated_cost_usd)
		   FROM maester.usage WHERE backend_pid = $pid GROUP BY status, error_class");
}

# 1. query cancel
my ($s, $pid) = start_batch();
my $t0 = time;
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
my $took = wait_idle($pid, $t0);
diag(sprintf("cancel: the batch stopped %.1f ms after pg_cancel_backend", $took * 1000));
cmp_ok($took, '<', 1, 'cancel stops the batch at once');
$s->query('SELECT 1');
like($s->{stderr}, qr/canceling statement due to user request/, 'cancel gives 57014');
is(ledger_of($pid), 'cancelled cancelled 16 true',
	'the 16 requests in flight are settled as cancelled, at their estimate; the others never started');
ok($mock->wait_for(sub { $mock->stats->{open_connections} <= 1 }, 5),
	'no connection left open to the upstream')
  or diag('open connections: ' . $mock->stats->{open_connections});
$s->quit;

# 2. pg_terminate_backend: the exit callback settles them
($s, $pid) = start_batch();
$t0 = time;
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
$took = wait_idle($pid, $t0);
diag(sprintf("terminate: the backend was gone %.1f ms after pg_terminate_backend", $took * 1000));
cmp_ok($took, '<', 1, 'terminate stops the batch at once');
is(ledger_of($pid), 'cancelled terminated 16 true',
	'the 16 requests in flight are settled as cancelled (terminated) at their estimate');
ok($mock->wait_for(sub { $mock->stats->{open_connections} <= 1 }, 5),
	'no connection left open after terminate');
eval { $s->quit; };

# 3. cancel while the outputs are being graded: the answered calls are
# settled as cancelled at what they really cost (their tokens are known),
# their grading calls (on the wire) at their estimate
{
	my $g = $node->background_psql('postgres', on_error_stop => 0);
	my $gpid = $g->query_safe('SELECT pg_backend_pid()');
	$mock->get('/_mock/reset');
	$g->{stdin} .= q{SELECT count(*) FROM maester.generate_batch(ARRAY(
		SELECT jsonb_build_object('prompt_name', 'graded', 'variables', jsonb_build_object('i', i),
		                          'model', 'mock-1', 'max_tokens', 50)
		  FROM generate_series(1, 4) i), concurrency => 4);} . "\n";
	$g->{run}->pump_nb;
	ok($mock->wait_for(sub { $mock->stats->{requests} >= 8 }, 10),
		'four calls answered and their four grading calls on the wire at once');
	$node->safe_psql('postgres', "SELECT pg_cancel_backend($gpid)");
	my $gt = wait_idle($gpid, time);
	cmp_ok($gt, '<', 1, 'cancel stops a batch that is grading at once');
	$node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM maester.usage WHERE backend_pid = $gpid AND status = 'pending'");
	is($node->safe_psql('postgres', qq{
		SELECT purpose || ' ' || status || ' ' || count(*) || ' '
		       || bool_and(input_tokens IS NOT NULL) || ' ' || bool_and(cost_usd < estimated_cost_usd)
		  FROM maester.usage WHERE backend_pid = $gpid GROUP BY purpose, status ORDER BY purpose}),
		"evaluation cancelled 4 false false\ngeneration cancelled 4 true true",
		'graded calls cancelled at their real cost; their grading calls at their estimate');
	$g->quit;
}

# budgets: what the cancelled requests reserved was settled, nothing is left reserved
is($node->safe_psql('postgres', q{SELECT count(*) FROM maester.usage WHERE status = 'pending'}),
	'0', 'nothing pending');

# the server is fine afterwards
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM maester.generate_batch(ARRAY['{"prompt": "x", "model": "mock-1"}'::jsonb]) WHERE error_class IS NULL}),
	'1', 'batches work after the interruptions');

$node->stop;
$mock->stop;
done_testing();

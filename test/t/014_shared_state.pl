# Shared state that holds up: budget counters, circuit breakers, pacing.
#
# 1. A budget load abandoned by its backend (terminated while it sums the
#    ledger) is taken over: later calls work, without a restart.
# 2. A slow load (the ledger locked for 2.5 s): concurrent callers wait for
#    it instead of failing "not loaded yet".
# 3. Overflow: a budget beyond the bound is refused at INSERT (23514); the
#    largest allowed budget breaks no call of any tenant.
# 4. A budget created while a batch runs counts the calls in flight: the
#    tenant's ledger stays within the limit, and the counter never shows
#    less than the ledger.
# 5. A budget whose scope is changed by UPDATE is counted again.
# 6. maester.max_budgets counts live budgets: deleted budgets' counters
#    are reused.
# 7. Circuits and pacing are per database (and circuits per model):
#    another database's failures and schedule do not touch this one;
#    circuit_reset affects only its database.
# 8. A timeout that is the caller's own shorter deadline does not open
#    the provider's circuit.
# 9. curl's sockets are counted against max_files_per_process.
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
my $url = $mock->url;
my $node = PostgreSQL::Test::Cluster->new('shared');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
maester.allow_insecure_hosts = '127.0.0.1'
maester.max_budgets = 4
});
$node->start;

my $setup = qq{
	CREATE EXTENSION maester;
	INSERT INTO maester.provider (name, kind, base_url, models, max_attempts, circuit_failure_threshold, circuit_cooldown_ms)
	VALUES ('mock', 'openai_compatible', '$url/open/v1', '{mock-%,fault-%}', 1, 2, 60000);
	INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
	VALUES ('mock-a', '2020-01-01', 1000, 2000), ('fault-latency-1500', '2020-01-01', 1, 2000),
	       ('fault-latency-2000', '2020-01-01', 1000, 2000), ('fault-status-503', '2020-01-01', 1, 1);
};
$node->safe_psql('postgres', $setup);
sub sq { return $node->safe_psql('postgres', $_[0]); }

my $call_as = sub {
	my ($tenant, $model) = @_;
	$model //= 'mock-a';
	return qq{SET maester.tenant = '$tenant'; SELECT content IS NOT NULL FROM maester.llm_generate('hello', '$model', max_tokens => 20);};
};

# a call in a background session; returns the session
sub start_call
{
	my ($sql) = @_;
	my $s = $node->background_psql('postgres', on_error_stop => 0);
	$s->{stdin} .= "$sql\n";
	$s->{run}->pump_nb;
	return $s;
}

# the output and errors of a background session's queries so far
sub finish_call
{
	my ($s) = @_;
	my $out = $s->query(q{SELECT 'end'});
	my $err = $s->{stderr};
	$s->quit;
	return ($out, $err);
}

sub wait_lock_waiters
{
	my ($n) = @_;
	return $node->poll_query_until('postgres',
		qq{SELECT count(*) >= $n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%llm_generate%'});
}

# ---------------------------------------------------------------------
# 1. an abandoned load
sq(q{INSERT INTO maester.budget (tenant, period, limit_usd, action) VALUES ('t1', 'month', 10, 'block')});
my $lock = $node->background_psql('postgres');
$lock->query_safe('BEGIN; LOCK TABLE maester.usage IN ACCESS EXCLUSIVE MODE');
my $b = start_call($call_as->('t1'));
ok(wait_lock_waiters(1), 'a call sums the budget\'s ledger, blocked by the lock');
is(sq(q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%llm_generate%'}),
	't', 'its backend is terminated in the middle of the load');
eval { local $SIG{PIPE} = "IGNORE"; $b->quit; };    # (its psql lost the connection)
$lock->query_safe('COMMIT');
is($node->safe_psql('postgres', $call_as->('t1')), 't', 'the next call under the budget works (the load is redone)');
is(sq(q{SELECT counters_loaded FROM maester.budget_status WHERE tenant = 't1'}), 't', 'and the counters are loaded');

# ---------------------------------------------------------------------
# 2. a slow load: concurrent callers wait for it
sq(q{INSERT INTO maester.budget (tenant, period, limit_usd, action) VALUES ('t2', 'month', 10, 'block')});
$lock->query_safe('BEGIN; LOCK TABLE maester.usage IN ACCESS EXCLUSIVE MODE');
my @callers = map { start_call($call_as->('t2')) } 1 .. 3;
ok(wait_lock_waiters(1), 'one caller sums the ledger');
usleep(2_500_000);
is(sq(q{SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%llm_generate%' AND state = 'active' AND pid <> pg_backend_pid()}), '3',
	'the others wait for it (more than 1 s), none failed');
$lock->query_safe('COMMIT');
my $ok = 0;
for my $s (@callers)
{
	my ($out, $err) = finish_call($s);
	$ok++ if $out =~ /^t$/m && $err eq '';
	diag("caller: $out $err") unless $out =~ /^t$/m;
}
is($ok, 3, 'all three calls went through once the load ended');
$lock->quit;

# ---------------------------------------------------------------------
# 3. overflow
my ($ret, $out, $err) = $node->psql('postgres',
	q{INSERT INTO maester.budget (tenant, period, limit_usd, action) VALUES ('someone-else', 'month', 1e12, 'block')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/23514.*budget_limit_usd_max/s, 'a limit above the bound is refused at INSERT');
($ret, $out, $err) = $node->psql('postgres',
	q{INSERT INTO maester.budget (tenant, period, limit_usd, action) VALUES ('someone-else', 'month', 'NaN', 'block')});
like($err, qr/budget_limit_usd_max/, 'so is NaN');
sq(q{INSERT INTO maester.budget (tenant, period, limit_usd, action) VALUES ('big', 'month', 1e9, 'block')});
is($node->safe_psql('postgres', $call_as->('big')), 't', 'the largest budget allowed: its tenant calls');
is($node->safe_psql('postgres', $call_as->('t1')), 't', 'and so do other tenants');
sq(q{DELETE FROM maester.budget WHERE tenant IN ('big', 't1', 't2')});

# ---------------------------------------------------------------------
# 4. a budget created while a batch is in flight (ten calls at a time of
# 1.5 s each; the estimate is the real cost but for the input tokens, so
# a limit of 1.5 times what is in flight lets about five more through)
my $batch = start_call(q{SET maester.tenant = 'fly';
	SELECT count(*) FILTER (WHERE error_class IS NULL) || ' ok, ' || count(*) FILTER (WHERE error_class = 'budget') || ' blocked'
	  FROM maester.generate_batch(ARRAY(SELECT jsonb_build_object('prompt', 'batch call ' || (i + 10), 'max_tokens', 10)
	                                      FROM generate_series(1, 40) i),
	                              model => 'fault-latency-1500', concurrency => 10);});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 10 FROM maester.usage WHERE tenant = 'fly' AND status = 'pending'}),
	'ten calls in flight');
my $inflight = sq(q{SELECT sum(estimated_cost_usd) FROM maester.usage WHERE tenant = 'fly' AND status = 'pending'});
my $limit = sq(qq{SELECT round($inflight * 1.5, 6)});
sq(qq{INSERT INTO maester.budget (tenant, period, limit_usd, action) VALUES ('fly', 'total', $limit, 'block')});
my ($bout, $berr) = finish_call($batch);
like($bout, qr/^(\d+) ok, (\d+) blocked$/m, 'the batch ended: ' . ($bout =~ /(\d+ ok, \d+ blocked)/)[0]);
my ($nok, $nblocked) = $bout =~ /^(\d+) ok, (\d+) blocked$/m;
cmp_ok($nblocked, '>=', 20, 'most of the rest was blocked');
my $spent = sq(q{SELECT sum(cost_usd) FROM maester.usage WHERE tenant = 'fly' AND status NOT IN ('pending', 'blocked')});
diag("in flight at creation \$$inflight, limit \$$limit, spent \$$spent, $nok calls");
is(sq(qq{SELECT $spent <= $limit}), 't', 'what the tenant spent stays within the limit');
my $counter = sq(q{SELECT spent_usd + reserved_usd FROM maester.budget_status WHERE tenant = 'fly'});
is(sq(qq{SELECT $counter >= $spent}), 't', "the counter (\$$counter) does not show less than the ledger");
is(sq(qq{SELECT $counter <= $spent + $inflight}), 't', 'nor much more');

# ---------------------------------------------------------------------
# 5. a scope changed by UPDATE is recounted
$node->safe_psql('postgres', $call_as->('a5')) for 1 .. 2;
my $id5 = sq(q{INSERT INTO maester.budget (tenant, period, limit_usd, action) VALUES ('a5', 'month', 5, 'block') RETURNING id});
$node->safe_psql('postgres', $call_as->('a5'));
my $a_spent = sq(q{SELECT sum(cost_usd) FROM maester.usage WHERE tenant = 'a5'});
is(sq(qq{SELECT spent_usd = $a_spent FROM maester.budget_status WHERE id = $id5}), 't', 'the budget counts a5\'s calls');
sq(qq{UPDATE maester.budget SET tenant = 'b5' WHERE id = $id5});
$node->safe_psql('postgres', $call_as->('b5'));
my $b_spent = sq(q{SELECT sum(cost_usd) FROM maester.usage WHERE tenant = 'b5'});
is(sq(qq{SELECT spent_usd = $b_spent FROM maester.budget_status WHERE id = $id5}), 't',
	'after UPDATE ... SET tenant it counts b5\'s calls only');

# ---------------------------------------------------------------------
# 6. counters of deleted budgets are reused (maester.max_budgets = 4)
sq(q{DELETE FROM maester.budget});
for my $round (1 .. 3)
{
	sq(qq{INSERT INTO maester.budget (tenant, period, limit_usd, action)
	      SELECT 'r$round', 'day', 5 + i, 'block' FROM generate_series(1, 4) i});
	is($node->safe_psql('postgres', $call_as->("r$round")), 't', "four new budgets in use (round $round)");
	sq(q{DELETE FROM maester.budget});
}

# ---------------------------------------------------------------------
# 7. circuits and pacing per database
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other', $setup);
for (1 .. 2)
{
	$node->psql('postgres', q{SELECT maester.llm_generate('x', 'fault-status-503')});
}
is(sq(q{SELECT state FROM maester.circuit WHERE provider = 'mock' AND model = 'fault-status-503'}), 'open',
	'two failures open the circuit of the model');
is(sq(q{SELECT count(*) FROM maester.circuit WHERE state = 'open'}), '1', 'of that model only');
($ret, $out, $err) = $node->psql('postgres', q{SELECT maester.llm_generate('x', 'mock-a')});
is($ret, 0, 'the provider\'s other model still answers');
$mock->get('/_mock/reset');
($ret, $out, $err) = $node->psql('other', q{SELECT maester.llm_generate('x', 'fault-status-503')});
like($err, qr/HTTP 503/, 'in another database the same provider and model are still called');
is($mock->stats->{requests}, 1, 'the request was sent');
is($node->safe_psql('other', q{SELECT count(*) FROM maester.circuit WHERE state = 'open'}), '0',
	'its circuits are its own');
is($node->safe_psql('other', q{SELECT maester.circuit_reset('mock')}), '1', 'circuit_reset in the other database');
is(sq(q{SELECT state FROM maester.circuit WHERE model = 'fault-status-503'}), 'open', 'does not touch this one');
is(sq(q{SELECT maester.circuit_reset('mock', 'fault-status-503')}), '1', 'circuit_reset of one model');

# pacing: 60 requests a minute (one a second) in each database
for my $db ('postgres', 'other')
{
	$node->safe_psql($db, q{UPDATE maester.provider SET requests_per_minute = 60 WHERE name = 'mock'});
}
sub timed_call
{
	my ($db) = @_;
	my $t0 = time;
	$node->safe_psql($db, q{SELECT maester.llm_generate('x', 'mock-a')});
	return time - $t0;
}
timed_call('postgres');
my $second_here = timed_call('postgres');
my $first_there = timed_call('other');
diag(sprintf('paced: second call here %.2f s, first call in the other database %.2f s', $second_here, $first_there));
cmp_ok($second_here, '>', 0.5, 'a database\'s calls are spaced by its provider\'s rate limit');
cmp_ok($first_there, '<', 0.5, 'another database\'s schedule is its own');
for my $db ('postgres', 'other')
{
	$node->safe_psql($db, q{UPDATE maester.provider SET requests_per_minute = NULL WHERE name = 'mock'});
}

# ---------------------------------------------------------------------
# 8. the caller's own deadline is not the provider's failure
for (1 .. 5)
{
	($ret, $out, $err) = $node->psql('postgres',
		q{SELECT maester.llm_generate('x', 'fault-latency-2000', options => '{"timeout_ms": 100}')});
}
like($err, qr/timeout|deadline/, 'a call with a 100 ms deadline against a slower upstream times out');
is(sq(q{SELECT coalesce((SELECT state || ' ' || consecutive_failures FROM maester.circuit WHERE model = 'fault-latency-2000'), 'none')}),
	'closed 0', 'five such timeouts do not open the circuit');
sq(q{UPDATE maester.provider SET timeout_ms = 100 WHERE name = 'mock'});
for (1 .. 2)
{
	$node->psql('postgres', q{SELECT maester.llm_generate('x', 'fault-latency-2000', options => '{"timeout_ms": 5000}')});
}
is(sq(q{SELECT state FROM maester.circuit WHERE model = 'fault-latency-2000'}), 'open',
	'the provider\'s own timeout does count');

# ---------------------------------------------------------------------
# 9. curl's sockets count against max_files_per_process (with 100, about
# 27 descriptors are left for external use): a batch at concurrency 64
# never holds more, and the calls that find none fail saying so
$node->append_conf('postgresql.conf', 'max_files_per_process = 100');
$node->restart;
sq(q{UPDATE maester.provider SET timeout_ms = 30000 WHERE name = 'mock'});
sq(q{SELECT maester.circuit_reset()});
my $s = $node->background_psql('postgres', on_error_stop => 0);
my $pid = $s->query_safe('SELECT pg_backend_pid()');
$s->{stdin} .= q{SELECT coalesce(error_class, 'ok') || coalesce(' ' || (error_message ~ 'out of file descriptors'), ''), count(*)
	  FROM maester.generate_batch(ARRAY(SELECT jsonb_build_object('prompt', 'fd ' || i) FROM generate_series(1, 64) i),
	                              model => 'fault-latency-1500', concurrency => 64) GROUP BY 1 ORDER BY 1;
	SELECT 'batch-done';
};
$s->{run}->pump_nb;
my $max_sockets = 0;
my $t_end = time + 60;
while (time < $t_end)
{
	my $n = grep { defined && /^socket:/ } map { readlink($_) } glob("/proc/$pid/fd/*");
	$max_sockets = $n if $n > $max_sockets;
	$s->{run}->pump_nb;
	last if $s->{stdout} =~ /batch-done/;
	usleep(20_000);
}
my $fd_out = $s->{stdout};
$s->quit;
diag("most sockets the backend held: $max_sockets; results: " . join('; ', grep { /\|/ } split /\n/, $fd_out));
cmp_ok($max_sockets, '<', 40, 'the backend never holds more sockets than its share of max_files_per_process');
like($fd_out, qr/^ok\|\d+/m, 'calls that got a descriptor are answered');
like($fd_out, qr/^connection true\|/m, 'the others fail saying they found no descriptor');

ok(!$node->log_contains('terminated by signal'), 'no process crashed');
$node->stop;
$mock->stop;
done_testing();

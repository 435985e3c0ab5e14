# Asynchronous jobs: maester.submit returns at once and the job workers
# run the jobs through the gateway (ledger rows linked by request_id,
# traces, evaluation); callbacks; errors per job; cancel_job for queued
# and running jobs; a fast job is never held behind a slow one; the
# workers are woken at commit; job_progress and job_retention; and a job
# worker stopped or killed while a call is in flight neither loses the
# job nor sends it twice (review), unless maester.job_retry_interrupted.
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
my $node = PostgreSQL::Test::Cluster->new('jobs');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
maester.allow_insecure_hosts = '127.0.0.1'
maester.job_workers = 1
maester.job_concurrency = 8
restart_after_crash = on
});
$node->start;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION maester;
	INSERT INTO maester.provider (name, kind, base_url, models, circuit_failure_threshold, max_attempts)
	VALUES ('mock', 'openai_compatible', '$url/open/v1', '{mock-%,fault-%}', 0, 1);
	INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
	VALUES ('mock-1', '2020-01-01', 1, 2), ('fault-latency-3000', '2020-01-01', 1, 2),
	       ('fault-latency-1000', '2020-01-01', 1, 2),
	       ('fault-hang', '2020-01-01', 1, 2);
	SELECT maester.prompt_register('greet', 'Hello {name}', version => '1');
	CREATE TABLE done_log (job_id bigint, status text, by_role name);
	CREATE PROCEDURE on_done(job_id bigint) LANGUAGE sql
	    AS \$\$ INSERT INTO done_log SELECT job_id, status, current_user FROM maester.job WHERE id = job_id \$\$;
	CREATE ROLE app LOGIN IN ROLE maester_user;
	INSERT INTO maester.tenant_member (role, tenant) VALUES ('app', 'acme'), ('app', 'initech');
	GRANT INSERT ON done_log TO app;
	GRANT SELECT ON done_log TO app;
});

sub sq { return $node->safe_psql('postgres', $_[0]); }

# wait until the jobs matching $where have all ended
sub wait_jobs
{
	my ($where, $secs) = @_;
	return $node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM maester.job WHERE ($where) AND status IN ('queued', 'running')");
}

# 1. submit returns at once; the jobs run, as their submitter
my $t0 = time;
my $ids = $node->safe_psql('postgres', q{
	SET ROLE app; SET maester.tenant = 'acme';
	SELECT string_agg(maester.submit(jsonb_build_object('prompt_name', 'greet',
	           'variables', jsonb_build_object('name', 'n' || i), 'model', 'mock-1'),
	           callback => 'on_done', submission => 'greetings')::text, ',')
	  FROM generate_series(1, 20) i;});
my $took = time - $t0;
diag(sprintf("submitting 20 jobs took %.1f ms", $took * 1000));
my @ids = split /,/, $ids;
is(scalar @ids, 20, 'twenty job ids');
ok(wait_jobs("submission = 'greetings'"), 'the jobs ended');
is(sq(q{SELECT string_agg(DISTINCT status, ',') FROM maester.job WHERE submission = 'greetings'}),
	'done', 'all done');
is(sq(q{SELECT count(*) FROM maester.job j JOIN maester.usage u USING (request_id)
      WHERE j.submission = 'greetings' AND u.status = 'ok' AND u.role = 'app' AND u.tenant = 'acme'
        AND u.trace_id = j.trace_id AND u.eval_status = 'pass'}),
	'20', 'each job is one ledger row, as its submitter and tenant, with its trace and evaluation');
is(sq(q{SELECT count(*) FROM maester.job WHERE submission = 'greetings'
      AND (result).content = '[Mock:mock-1] Generated response for prompt: Hello ' || ((request->'variables')->>'name')}),
	'20', 'the results are the generations');
is(sq(q{SELECT total || ' ' || done || ' ' || queued || ' ' || (per_second > 0) || ' ' || eta
       FROM maester.job_progress WHERE submission = 'greetings'}),
	'20 20 0 true 00:00:00', 'job_progress');
$node->poll_query_until('postgres',
	q{SELECT count(*) >= 20 FROM maester.span WHERE name = 'llm_generate'
	    AND trace_id IN (SELECT trace_id FROM maester.job WHERE submission = 'greetings')})
  or diag('spans missing');

# a conversation with tools as a job: the result's later fields (tool calls,
# the parsed answer) are the job's columns
my $tj = sq(q{SELECT maester.submit('{"messages": [{"role": "user", "content": "Weather?"}], "model": "mock-1",
    "options": {"tools": [{"name": "get_weather", "parameters": {"type": "object",
                "properties": {"city": {"type": "string"}}}}]}}')});
my $schema_job = sq(q{SELECT maester.submit('{"prompt": "Extract", "model": "mock-1", "options": {"response_format":
    {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object",
     "properties": {"n": {"type": "integer"}}}}}}}')});
ok(wait_jobs("id IN ($tj, $schema_job)"), 'the tool and schema jobs ended');
is(sq(qq{SELECT status || ' ' || (result).finish_reason || ' ' || (tool_calls -> 0 ->> 'name') || ' ' ||
         (tool_calls -> 0 -> 'arguments')::text FROM maester.job WHERE id = $tj}),
	'done tool_calls get_weather {"city": "mock"}', 'a job\'s tool calls are its tool_calls column');
is(sq(qq{SELECT status || ' ' || parsed::text || ' ' || (result).content FROM maester.job WHERE id = $schema_job}),
	'done {"n": 1} {"n": 1}', 'a job\'s parsed answer is its parsed column');

# callbacks run apart, in the callback worker; wait until the matching jobs'
# callbacks have run
sub wait_callbacks
{
	my ($where) = @_;
	return $node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM maester.job WHERE ($where) AND callback IS NOT NULL AND callback_done_at IS NULL");
}
ok(wait_callbacks("submission = 'greetings'"), 'the callbacks ran');
is(sq(q{SELECT count(*) || ' ' || bool_and(status = 'done') || ' ' || bool_and(by_role = 'app') FROM done_log}),
	'20 true true', 'the callback ran for every job, as the submitter, seeing the result');

# a callback's settings do not stay in the worker's session
$node->safe_psql('postgres', q{
	CREATE PROCEDURE meddle(job_id bigint) LANGUAGE plpgsql AS $$
	BEGIN
	  PERFORM set_config('application_name', 'meddled', false);
	  PERFORM set_config('search_path', 'evil, public', false);
	END $$;});
my $m = sq(q{SELECT maester.submit('{"prompt": "m", "model": "mock-1"}', callback => 'meddle')});
wait_jobs("id = $m");
wait_callbacks("id = $m");
is(sq(q{SELECT string_agg(application_name, ',') FROM pg_stat_activity WHERE backend_type = 'maester callback worker'}),
	'maester callback worker', 'what a callback SETs is undone when it returns');
is(sq(q{SELECT status || ' ' || (callback_error IS NULL) FROM maester.job WHERE id = } . $m), 'done true',
	'the job is done');

# a callback raising a cancel or shutdown code does not stop the worker
$node->safe_psql('postgres', q{
	CREATE PROCEDURE raise_cancel(job_id bigint) LANGUAGE plpgsql AS $$
	BEGIN RAISE EXCEPTION 'fake cancel' USING ERRCODE = 'query_canceled'; END $$;
	CREATE PROCEDURE raise_shutdown(job_id bigint) LANGUAGE plpgsql AS $$
	BEGIN RAISE EXCEPTION 'fake shutdown' USING ERRCODE = 'admin_shutdown'; END $$;});
my $wpid0 = sq(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'maester callback worker'});
my $rc1 = sq(q{SELECT maester.submit('{"prompt": "c1", "model": "mock-1"}', callback => 'raise_cancel')});
my $rc2 = sq(q{SELECT maester.submit('{"prompt": "c2", "model": "mock-1"}', callback => 'raise_shutdown')});
wait_jobs("id IN ($rc1, $rc2)");
wait_callbacks("id IN ($rc1, $rc2)");
is(sq(qq{SELECT string_agg(status || ': ' || callback_error, ', ' ORDER BY id) FROM maester.job WHERE id IN ($rc1, $rc2)}),
	'done: fake cancel, done: fake shutdown', 'a callback\'s error is kept with its job');
is(sq(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'maester callback worker'}), $wpid0,
	'and the callback worker goes on');

# a callback runs under maester.callback_timeout, and a session advisory
# lock it takes does not outlive it
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET maester.callback_timeout = '1s'; SELECT pg_reload_conf();
	CREATE PROCEDURE sleepy(job_id bigint) LANGUAGE sql AS $$ SELECT pg_sleep(30) $$;
	CREATE PROCEDURE locker(job_id bigint) LANGUAGE sql AS $$ SELECT pg_advisory_lock(4242) $$;});
my $sl = sq(q{SELECT maester.submit('{"prompt": "z", "model": "mock-1"}', callback => 'sleepy')});
my $lk = sq(q{SELECT maester.submit('{"prompt": "l", "model": "mock-1"}', callback => 'locker')});
my $t_cb = time;
wait_callbacks("id IN ($sl, $lk)");
diag(sprintf("a 30 s callback under a 1 s timeout ended after %.1f s", time - $t_cb));
like(sq(qq{SELECT callback_error FROM maester.job WHERE id = $sl}), qr/statement timeout/,
	'a callback is stopped by maester.callback_timeout');
is(sq(qq{SELECT callback_error IS NULL FROM maester.job WHERE id = $lk}), 't', 'the locking callback ran');
is(sq(q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242}), '0',
	'its session advisory lock was released');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET maester.callback_timeout; SELECT pg_reload_conf();});

# a slow callback holds up no other job: a job submitted while a callback
# sleeps runs and ends at once
my $sl2 = sq(q{SELECT maester.submit('{"prompt": "z2", "model": "mock-1"}', callback => 'sleepy')});
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'maester callback worker' AND wait_event = 'PgSleep'})
  or diag('the slow callback did not start');
my $t_q = time;
my $quick = sq(q{SELECT maester.submit('{"prompt": "quick", "model": "mock-1"}')});
wait_jobs("id = $quick");
my $quick_s = time - $t_q;
diag(sprintf("a job submitted during a 30 s callback ended in %.0f ms", $quick_s * 1000));
cmp_ok($quick_s, '<', 5, 'a job is not held behind another job\'s slow callback');
sq(q{SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE backend_type = 'maester callback worker'});
wait_callbacks("id = $sl2");

# 2. woken at commit, not by the once-a-second poll
my @delays;
for my $i (1 .. 5)
{
	usleep(300_000);
	my $id = sq(q{SELECT maester.submit('{"prompt": "wake", "model": "mock-1"}')});
	wait_jobs("id = $id");
	push @delays, sq(q{SELECT round(extract(epoch FROM started_at - submitted_at) * 1000) FROM maester.job WHERE id = } . $id);
}
@delays = sort { $a <=> $b } @delays;
diag("submit to start (ms): @delays");
cmp_ok($delays[2], '<', 500, 'a job starts at once after its commit');

# 3. errors stay with their job, and bad submissions are refused at once
my $bad = sq(q{SELECT maester.submit('{"prompt_name": "no_such_prompt", "model": "mock-1"}')});
my $bad2 = sq(q{SELECT maester.submit('{"prompt": "x", "model": "fault-status-400"}')});
wait_jobs("id IN ($bad, $bad2)");
is(sq(q{SELECT string_agg(status || ' ' || error_code || ' ' || error_class, ', ' ORDER BY id) FROM maester.job WHERE id IN (} . "$bad, $bad2)"),
	'failed 42704 invalid_request, failed MG001 bad_request', 'failed jobs keep their error');
my ($rc, $out, $err) = $node->psql('postgres', q{SELECT maester.submit('{"prompt": "x", "colour": "red"}')});
like($err, qr/unknown request member "colour"/, 'a bad request is refused at submit');
($rc, $out, $err) = $node->psql('postgres', q{SELECT maester.submit('{"prompt": "x"}', callback => 'now')});
like($err, qr/callback must be a procedure taking the job id/, 'a callback must be a procedure');

# 4. a fast job is not held behind slow ones; cancel_job
my $slow = sq(q{SELECT string_agg(maester.submit('{"prompt": "slow", "model": "fault-latency-3000"}')::text, ',') FROM generate_series(1, 3)});
my $fast = sq(q{SELECT maester.submit('{"prompt": "fast", "model": "mock-1"}')});
wait_jobs("id = $fast");
is(sq(q{SELECT count(*) FROM maester.job WHERE id IN (} . "$slow) AND status = 'running'"), '3',
	'the fast job finished while the slow ones still ran');
my $hang = sq(q{SELECT maester.submit('{"prompt": "hang", "model": "fault-hang", "options": {"timeout_ms": 60000}}')});
$node->poll_query_until('postgres', "SELECT status = 'running' FROM maester.job WHERE id = $hang");
usleep(300_000);
is(sq(q{SELECT maester.cancel_job(} . "$hang)"), 't', 'cancel_job of a running job');
wait_jobs("id = $hang");
is(sq(q{SELECT status || ' ' || error_class FROM maester.job WHERE id = } . $hang), 'cancelled cancelled',
	'the running job was cancelled');
$node->poll_query_until('postgres', "SELECT count(*) = 0 FROM maester.usage WHERE status = 'pending'");
is(sq(q{SELECT u.status || ' ' || u.error_class FROM maester.usage u JOIN maester.job j USING (request_id) WHERE j.id = } . $hang),
	'cancelled cancelled', 'its attempt is settled in the ledger as cancelled');
wait_jobs("id IN ($slow)");

$node->safe_psql('postgres', q{ALTER SYSTEM SET maester.job_workers = 0; SELECT pg_reload_conf();});
$node->poll_query_until('postgres', q{SELECT job_workers = 0 FROM maester.worker_status()});
usleep(500_000);    # the resident worker has read the setting
my $queued = sq(q{SELECT maester.submit('{"prompt": "never", "model": "mock-1"}')});
is(sq(q{SELECT maester.cancel_job(} . "$queued)"), 't', 'cancel_job of a queued job');
is(sq(q{SELECT status FROM maester.job WHERE id = } . $queued), 'cancelled', 'the queued job is cancelled');
is(sq(q{SELECT maester.cancel_job(} . "$queued)"), 'f', 'cancelling an ended job: false');
($rc, $out, $err) = $node->psql('postgres', q{SELECT maester.cancel_job(999999)});
like($err, qr/job 999999 does not exist/, 'cancel_job of an unknown job');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET maester.job_workers; SELECT pg_reload_conf();});

# a job row locked by someone else when its call ends: the worker records
# it once the lock is gone, and meanwhile goes on with other jobs
my $locked = sq(q{SELECT maester.submit('{"prompt": "locked", "model": "fault-latency-1000"}')});
$node->poll_query_until('postgres', "SELECT status = 'running' FROM maester.job WHERE id = $locked");
my $holder = $node->background_psql('postgres');
$holder->query_safe("BEGIN; SELECT 1 FROM maester.job WHERE id = $locked FOR UPDATE;");
usleep(1_500_000);    # the call has ended; its row cannot be written
my $other = sq(q{SELECT maester.submit('{"prompt": "meanwhile", "model": "mock-1"}')});
ok(wait_jobs("id = $other"), 'another job ran while the row was locked');
is(sq(q{SELECT status FROM maester.job WHERE id = } . $locked), 'running', 'the locked job is not recorded yet');
$holder->query_safe('COMMIT');
$holder->quit;
ok(wait_jobs("id = $locked"), 'recorded once the lock is gone');
is(sq(q{SELECT status FROM maester.job WHERE id = } . $locked), 'done', 'done');

# 5. the worker running jobs (the database's resident worker with
# maester.job_workers = 1) stopped (SIGTERM) while its call is in flight: the call
# is settled as cancelled, the job goes to review, and it is not sent again
sub hanging_job
{
	$mock->get('/_mock/reset');
	my $id = sq(q{SELECT maester.submit('{"prompt": "interrupted", "model": "fault-hang", "options": {"timeout_ms": 60000}}')});
	ok($mock->wait_for(sub { $mock->stats->{requests} >= 1 }, 20), 'the job reached the upstream');
	return $id;
}
my $id = hanging_job();
sq(q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'maester worker'});
wait_jobs("id = $id");
is(sq(q{SELECT status || ' ' || error_class || ' ' || attempts FROM maester.job WHERE id = } . $id),
	'review interrupted 1', 'a job interrupted in flight goes to review');
$node->poll_query_until('postgres', "SELECT count(*) = 0 FROM maester.usage WHERE status = 'pending'");
is(sq(q{SELECT string_agg(u.status, ',') FROM maester.usage u JOIN maester.job j USING (request_id) WHERE j.id = } . $id),
	'cancelled', 'its attempt is settled once, as cancelled');
# the launcher restarts the worker; the job is not run again
$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'maester worker'});
my $after = sq(q{SELECT maester.submit('{"prompt": "after", "model": "mock-1"}')});
wait_jobs("id = $after");
is($mock->stats->{requests}, 2, 'the interrupted job was sent once (plus the new one)');

# the worker's exit path never waits for a lock: a running job whose row
# someone holds is left to the successor, which sets it aside once free
$id = hanging_job();
my $holder2 = $node->background_psql('postgres');
$holder2->query_safe("BEGIN; SELECT 1 FROM maester.job WHERE id = $id FOR UPDATE;");
my $rpid = sq(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'maester worker'});
my $t_exit = time;
sq(qq{SELECT pg_terminate_backend($rpid)});
ok($node->poll_query_until('postgres', qq{SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $rpid}),
	'the worker exits');
my $exit_s = time - $t_exit;
diag(sprintf('a worker whose running job\'s row was locked exited in %.0f ms', $exit_s * 1000));
cmp_ok($exit_s, '<', 5, 'without waiting for the lock');
is(sq(qq{SELECT status FROM maester.job WHERE id = $id}), 'running', 'the locked job is left as it was');
$holder2->query_safe('COMMIT');
$holder2->quit;
ok($node->poll_query_until('postgres', qq{SELECT status = 'review' FROM maester.job WHERE id = $id}),
	'the successor sets it aside once the lock is gone');
$node->poll_query_until('postgres', "SELECT count(*) = 0 FROM maester.usage WHERE status = 'pending'");

# the callback worker stuck in a long callback still stops at once on SIGTERM
$node->safe_psql('postgres', q{
	CREATE PROCEDURE slow_cb(job_id bigint) LANGUAGE sql AS $$ SELECT pg_sleep(60) $$;});
my $sj = sq(q{SELECT maester.submit('{"prompt": "s", "model": "mock-1"}', callback => 'slow_cb')});
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'maester callback worker' AND wait_event = 'PgSleep'})
  or diag('the callback did not start');
my $cbpid = sq(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'maester callback worker'});
# (the callback runs again after the interruption: let that run be quick)
sq(q{CREATE OR REPLACE PROCEDURE slow_cb(job_id bigint) LANGUAGE sql AS $$ SELECT 1 $$});
my $t1 = time;
sq(qq{SELECT pg_terminate_backend($cbpid)});
$node->poll_query_until('postgres', qq{SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $cbpid});
my $stop = time - $t1;
diag(sprintf("a worker in a 60 s callback stopped %.0f ms after SIGTERM", $stop * 1000));
cmp_ok($stop, '<', 10, 'a worker in a long callback stops on SIGTERM');
wait_jobs("id = $sj");
ok(wait_callbacks("id = $sj"), 'the interrupted callback runs again, in a new callback worker');
is(sq(q{SELECT status || ' ' || (callback_error IS NULL) FROM maester.job WHERE id = } . $sj), 'done true',
	'its job is done, and its callback ran to the end');

# 6. SIGKILL (a crash restart) while in flight: review, sent once
$id = hanging_job();
my $wpid = sq(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'maester worker'});
kill 'KILL', $wpid;
$node->poll_query_until('postgres', "SELECT status = 'review' FROM maester.job WHERE id = $id")
  or diag('not in review: ' . sq(q{SELECT status FROM maester.job WHERE id = } . $id));
is(sq(q{SELECT status || ' ' || error_class FROM maester.job WHERE id = } . $id), 'review interrupted',
	'after a crash the job is in review');
$node->poll_query_until('postgres', "SELECT count(*) = 0 FROM maester.usage WHERE status = 'pending'");
is(sq(q{SELECT string_agg(u.status, ',') FROM maester.usage u JOIN maester.job j USING (request_id) WHERE j.id = } . $id),
	'orphaned', 'its attempt is recovered as orphaned (charged at its estimate)');
usleep(1_500_000);
is($mock->stats->{requests}, 1, 'and it was not sent again');

# 7. with maester.job_retry_interrupted it runs again
$node->safe_psql('postgres', q{ALTER SYSTEM SET maester.job_retry_interrupted = on; SELECT pg_reload_conf();});
$mock->get('/_mock/reset');
$id = sq(q{SELECT maester.submit('{"prompt": "retried", "model": "fault-latency-3000"}')});
ok($mock->wait_for(sub { $mock->stats->{requests} >= 1 }, 20), 'the job reached the upstream');
sq(q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'maester worker'});
ok($node->poll_query_until('postgres', "SELECT status = 'done' FROM maester.job WHERE id = $id"),
	'the interrupted job ran again');
is(sq(q{SELECT attempts FROM maester.job WHERE id = } . $id), '2', 'twice');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET maester.job_retry_interrupted; SELECT pg_reload_conf();});

# 8. retention: ended jobs older than the age go; review jobs stay
is(sq(q{SELECT maester.job_retention('0 seconds') > 0}), 't', 'job_retention deleted ended jobs');
is(sq(q{SELECT string_agg(DISTINCT status, ',') FROM maester.job}), 'review', 'jobs in review are kept');

# 11. a job is checked as its submitter when it runs: the mapping removed
# in the submitting transaction, the job fails with 42501 and sends nothing
my $jid = sq(q{BEGIN;
	SET ROLE app; SET maester.tenant = 'initech';
	SELECT maester.submit('{"prompt": "unmapped", "model": "mock-1"}', submission => 'unmapped');
	RESET ROLE;
	DELETE FROM maester.tenant_member WHERE role = 'app'::regrole AND tenant = 'initech';
	COMMIT;});
ok(wait_jobs("submission = 'unmapped'"), 'the unmapped job ended');
is(sq(qq{SELECT status || ' ' || error_code FROM maester.job WHERE id = $jid}), 'failed 42501',
	'a job whose submitter lost its tenant fails with 42501');
is(sq(qq{SELECT count(*) FROM maester.usage u JOIN maester.job j USING (request_id) WHERE j.id = $jid}),
	'0', 'and reaches neither the ledger nor the provider');

$node->stop;
$mock->stop;
done_testing();

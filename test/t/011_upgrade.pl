# The upgrade path, for every released version (src/sql/released):
#   1. a cluster runs that version's library (built from its release
#      commit by scripts/test.sh), and a database is filled through it:
#      prompts, labels, prices, budgets, calls and batches (ledger rows,
#      spans), jobs in every status, an evaluation suite and its runs, a
#      captured call;
#   2. the same cluster restarts with the current library: the old catalog
#      is refused with 55000 and a hint, the workers wait, nothing crashes;
#   3. ALTER EXTENSION maester UPDATE: the data is there and usable (a call,
#      a render with the old hash, a job's result, a budget, a replay, a new
#      job, a new evaluation run);
#   4. the updated database equals a new CREATE EXTENSION maester: the same
#      extension members, function attributes, policies, triggers, grants,
#      configuration tables and filters, and identical schema-only dumps;
#   5. a pg_dump taken under the old version restores into the current one.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MaesterMock;

my $installs = $ENV{MAESTER_RELEASES}
  or BAIL_OUT('MAESTER_RELEASES is not set: run this test through scripts/test.sh');
open(my $fh, '<', $installs) or BAIL_OUT("cannot read $installs: $!");
my @releases = map { chomp; [ split / / ] } <$fh>;
close $fh;
ok(@releases > 0, 'at least one released version to update from');

my $current_version = do {
	my ($v) = slurp_file("$FindBin::RealBin/../../maester.control") =~ /default_version\s*=\s*'([^']+)'/;
	$v;
};

my $mock = MaesterMock->start;
my $url = $mock->url;

# Catalog facts that must agree between an updated and a new database
my %facts = (
	members => q{
		SELECT pg_describe_object(d.classid, d.objid, d.objsubid)
		  FROM pg_depend d JOIN pg_extension e ON d.refobjid = e.oid
		 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'maester'
		 ORDER BY 1},
	functions => q{
		SELECT concat_ws(' ', p.oid::regprocedure, l.lanname, p.prokind, p.provolatile, p.proparallel,
		                 p.prosecdef, p.proisstrict, p.proretset, p.prorettype::regtype,
		                 coalesce(p.proconfig::text, '-'), pg_get_function_arguments(p.oid),
		                 md5(coalesce(p.prosrc, '') || coalesce(p.probin, '')),
		                 coalesce(obj_description(p.oid, 'pg_proc'), '-'))
		  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
		 WHERE p.pronamespace = 'maester'::regnamespace ORDER BY 1},
	policies => q{
		SELECT concat_ws(' ', tablename, policyname, permissive, roles::text, cmd,
		                 coalesce(qual, '-'), coalesce(with_check, '-'))
		  FROM pg_policies WHERE schemaname = 'maester' ORDER BY 1},
	rls => q{
		SELECT concat_ws(' ', c.oid::regclass, c.relrowsecurity, c.relforcerowsecurity)
		  FROM pg_class c WHERE c.relnamespace = 'maester'::regnamespace AND c.relkind = 'r' ORDER BY 1},
	triggers => q{
		SELECT concat_ws(' ', pg_get_triggerdef(t.oid), t.tgenabled)
		  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
		 WHERE NOT t.tgisinternal AND c.relnamespace = 'maester'::regnamespace ORDER BY 1},
	grants => q{
		SELECT concat_ws(' ', x.obj, coalesce(g.rolname, 'PUBLIC'), a.privilege_type, a.is_grantable)
		  FROM (SELECT c.oid::regclass::text AS obj, c.relacl AS acl FROM pg_class c
		         WHERE c.relnamespace = 'maester'::regnamespace
		        UNION ALL
		        SELECT p.oid::regprocedure::text, p.proacl FROM pg_proc p
		         WHERE p.pronamespace = 'maester'::regnamespace
		        UNION ALL
		        SELECT 'schema ' || n.nspname, n.nspacl FROM pg_namespace n WHERE n.nspname = 'maester') x
		 CROSS JOIN LATERAL aclexplode(x.acl) a
		  LEFT JOIN pg_roles g ON g.oid = a.grantee
		 ORDER BY 1},
	column_grants => q{
		SELECT concat_ws(' ', c.oid::regclass || '.' || t.attname, coalesce(g.rolname, 'PUBLIC'), a.privilege_type)
		  FROM pg_attribute t JOIN pg_class c ON c.oid = t.attrelid
		 CROSS JOIN LATERAL aclexplode(t.attacl) a
		  LEFT JOIN pg_roles g ON g.oid = a.grantee
		 WHERE c.relnamespace = 'maester'::regnamespace ORDER BY 1},
	config_dump => q{
		SELECT concat_ws(' ', c::regclass, coalesce(f, '-'))
		  FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS u(c, f)
		 WHERE e.extname = 'maester' ORDER BY 1},
	shipped => q{
		SELECT string_agg(r, ',' ORDER BY r) FROM (
		    SELECT 'provider ' || name AS r FROM maester.provider WHERE shipped
		    UNION ALL SELECT 'route ' || name FROM maester.route WHERE shipped
		    UNION ALL SELECT 'price ' || model FROM maester.price WHERE shipped) s},
	types => q{
		SELECT t.typname || ' ' || string_agg(a.attname || ':' || format_type(a.atttypid, a.atttypmod), ',' ORDER BY a.attnum)
		  FROM pg_type t JOIN pg_class c ON c.oid = t.typrelid JOIN pg_attribute a ON a.attrelid = c.oid
		 WHERE t.typnamespace = 'maester'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
		 GROUP BY t.typname ORDER BY 1},
);

# A schema-only dump of schema maester, its objects detached from the
# extension first so that pg_dump prints them (the database is spent)
sub schema_dump
{
	my ($node, $db) = @_;
	$node->safe_psql($db, q{
		DELETE FROM pg_depend WHERE deptype = 'e' AND refclassid = 'pg_extension'::regclass
		   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'maester')});
	my $out = $node->basedir . "/$db.schema.sql";
	$node->command_ok([ 'pg_dump', '-s', '-n', 'maester', '-f', $out, '-d', $node->connstr($db) ],
		"schema-only dump of $db");
	return join('', grep { !/^\\(un)?restrict / } split(/^/m, slurp_file($out)));
}

for my $release (@releases)
{
	my ($old, $inst) = @$release;
	note("updating from $old");
	my $node = PostgreSQL::Test::Cluster->new("upgrade_$old", install_path => $inst);
	$node->init;
	$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
maester.allow_insecure_hosts = '127.0.0.1'
maester.capture_content = on
});
	$node->start;

	# 1. fill a database through the old library
	$node->safe_psql('postgres', 'CREATE DATABASE filled');
	is($node->safe_psql('filled', q{CREATE EXTENSION maester;
		SELECT extversion FROM pg_extension WHERE extname = 'maester'}), $old, "version $old created");
	$node->safe_psql('filled', qq{
		INSERT INTO maester.provider (name, kind, base_url, models, circuit_failure_threshold)
		VALUES ('mock', 'openai_compatible', '$url/open/v1', '{mock-%,fault-%}', 0);
		INSERT INTO maester.model (name, provider, provider_model, aliases)
		VALUES ('grader', 'mock', 'fault-verdict-pass', '{judge}');
		INSERT INTO maester.route (name) VALUES ('cheap');
		INSERT INTO maester.route_target (route, position, provider, model) VALUES ('cheap', 1, 'mock', 'mock-1');
		UPDATE maester.route_target SET model = 'claude-sonnet-4-5' WHERE route = 'default' AND position = 2;
		INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
		VALUES ('mock-1', '2020-01-01', 1, 2), ('fault-verdict-pass', '2020-01-01', 3, 4);
		INSERT INTO maester.budget (tenant, period, limit_usd, action) VALUES ('default', 'month', 10, 'block');
		SELECT maester.prompt_register('summary', 'Summarize: {event}', version => 'v1');
		SELECT maester.prompt_register('summary', 'Summarize briefly: {event}',
		    checks => '[{"type": "llm_rubric", "value": "Summarizes.", "model": "grader"}]');
		SELECT maester.prompt_set_label('summary', 'production', 'v1');
		SELECT maester.prompt_set_label('summary', 'production', 'v2');
		SELECT maester.prompt_set_label('summary', 'production', 'v1');
		SELECT count(*) FROM maester.llm_generate(prompt_name => 'summary', variables => '{"event": "disk full"}',
		                                          prompt_version => 'production', model => 'mock-1');
		SELECT count(*) FROM maester.llm_generate(prompt_name => 'summary', variables => '{"event": "cpu hot"}',
		                                          model => 'cheap');
		SELECT count(*) FROM maester.generate_batch(ARRAY['{"prompt": "a", "model": "mock-1"}',
		    '{"prompt": "b", "model": "fault-status-400"}', '{"prompt": "c", "model": "nobody-serves-this"}']::jsonb[]);
		SELECT maester.complete('{"prompt": "hello", "model": "mock-1"}') IS NOT NULL;
		INSERT INTO maester.eval_suite (name, prompt) VALUES ('suite', 'summary');
		INSERT INTO maester.eval_case (suite, case_name, variables) VALUES
		    ('suite', 'one', '{"event": "disk full"}'), ('suite', 'two', '{"event": "cpu hot"}');
		SELECT (maester.eval_run('suite', 'v1', 'mock-1')).cases;
	});
	# jobs in every status: done and failed by the worker, cancelled before
	# it started, and (by hand) queued, running and review
	$node->safe_psql('filled', q{
		SELECT maester.submit('{"prompt": "job one", "model": "mock-1"}', submission => 'old');
		SELECT maester.submit('{"prompt": "job two", "model": "fault-status-400"}', submission => 'old');
	});
	$node->poll_query_until('filled',
		q{SELECT count(*) = 2 FROM maester.job WHERE status IN ('done', 'failed')})
	  or diag('the old job worker did not finish the jobs');
	$node->safe_psql('filled', q{
		BEGIN;
		SELECT maester.cancel_job(maester.submit('{"prompt": "never", "model": "mock-1"}', submission => 'old'));
		COMMIT;
		ALTER SYSTEM SET maester.job_workers = 0;
		SELECT pg_reload_conf();
	});
	$node->poll_query_until('filled',
		q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'maester job worker'});
	$node->safe_psql('filled', q{
		SELECT maester.submit('{"prompt": "queued", "model": "mock-1"}', submission => 'old');
		SELECT maester.submit('{"prompt": "running", "model": "mock-1"}', submission => 'old');
		SELECT maester.submit('{"prompt": "review", "model": "mock-1"}', submission => 'old');
		UPDATE maester.job SET status = 'running', worker = 0, started_at = now(), attempts = 1,
		       request_id = gen_random_uuid() WHERE request ->> 'prompt' = 'running';
		UPDATE maester.job SET status = 'review', finished_at = now(), error_class = 'interrupted',
		       error_code = '57P01', error_message = 'set by the upgrade test'
		 WHERE request ->> 'prompt' = 'review';
	});
	is($node->safe_psql('filled', q{SELECT string_agg(status, ',' ORDER BY status) FROM maester.job}),
		'cancelled,done,failed,queued,review,running', 'jobs in every status');
	$node->poll_query_until('filled',
		q{SELECT count(*) > 0 FROM maester.span WHERE name = 'llm_generate'});
	$node->poll_query_until('filled',
		q{SELECT count(*) = 0 FROM maester.usage WHERE status = 'pending'});

	my $render = q{SELECT hash FROM maester.prompt_render('summary', '{"event": "disk full"}', 'production')};
	my %before = (
		render => $node->safe_psql('filled', $render),
		job => $node->safe_psql('filled', q{SELECT (result).content || '|' || (result).cost_usd
			FROM maester.job WHERE status = 'done'}),
		ledger => $node->safe_psql('filled', q{SELECT count(*) || ' ' || sum(cost_usd) || ' '
			|| count(*) FILTER (WHERE purpose = 'evaluation') FROM maester.usage}),
		history => $node->safe_psql('filled', q{SELECT string_agg(from_version || '>' || to_version, ',' ORDER BY id)
			FROM maester.prompt_label_history}),
		spans => $node->safe_psql('filled', q{SELECT count(*) FROM maester.span}),
		evals => $node->safe_psql('filled', q{SELECT count(*) || ' ' || sum(cases) FROM maester.eval_run}),
		capture => $node->safe_psql('filled', q{SELECT count(*) FROM maester.capture}),
	);
	like($before{job}, qr/^\[Mock:mock-1\]/, 'a done job has its result');
	cmp_ok($before{capture}, '>', 0, 'calls were captured');

	my $dump = $node->basedir . '/filled.dump';
	$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('filled') ],
		"pg_dump of the $old database");
	$node->stop;

	# 2. the current library against the old catalog: refused, no crash
	delete $node->{_install_path};
	$node->start;
	my ($ret, $out, $err) = $node->psql('filled',
		q{SELECT * FROM maester.llm_generate('x', 'mock-1')});
	like($err, qr/the maester library \Q$current_version\E does not serve the catalog of version \Q$old\E/,
		"a call on the $old catalog is refused");
	like($err, qr/HINT:\s+Run ALTER EXTENSION maester UPDATE/, '... with the hint');
	($ret, $out, $err) = $node->psql('filled', "SELECT hash FROM maester.prompt_render('summary', '{}')",
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	like($err, qr/ERROR:\s+55000/, 'rendering is refused with 55000');
	is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE datname = 'filled' AND backend_type = 'maester worker'}),
		'0', 'no maester worker writes into the old catalog');
	ok(!$node->log_contains('terminated by signal'), 'no process crashed');

	# 3. update: the data is there and usable
	$node->safe_psql('filled', 'ALTER EXTENSION maester UPDATE');
	ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE datname = 'filled' AND backend_type = 'maester worker'}),
		'the update starts the database\'s worker');
	is($node->safe_psql('filled', q{SELECT extversion FROM pg_extension WHERE extname = 'maester'}),
		$current_version, "updated from $old to $current_version");
	is($node->safe_psql('filled', $render), $before{render}, 'a render gives the old hash');
	is($node->safe_psql('filled', q{SELECT string_agg(position || ' ' || shipped, ',' ORDER BY position)
		FROM maester.route_target WHERE route = 'default'}), '1 true,2 false',
		'the update marks the shipped rows still as shipped, and not the one an admin edited');
	is($node->safe_psql('filled', q{SELECT (result).content || '|' || (result).cost_usd
		FROM maester.job WHERE status = 'done'}), $before{job}, "a job's result reads back");
	is($node->safe_psql('filled', q{SELECT count(*) || ' ' || sum(cost_usd) || ' '
		|| count(*) FILTER (WHERE purpose = 'evaluation') FROM maester.usage}), $before{ledger},
		'the ledger is intact');
	is($node->safe_psql('filled', q{SELECT string_agg(from_version || '>' || to_version, ',' ORDER BY id)
		FROM maester.prompt_label_history}), $before{history}, 'the label history is intact');
	is($node->safe_psql('filled', q{SELECT count(*) FROM maester.span}), $before{spans}, 'spans are intact');
	is($node->safe_psql('filled',
		q{SELECT provider || ' ' || model || ' ' || (evaluation ->> 'status')
		    FROM maester.llm_generate(prompt_name => 'summary', variables => '{"event": "disk full"}',
		                              prompt_version => 'production', model => 'judge')}),
		'mock fault-verdict-pass pass', 'a call after the update, through an old alias');
	is($node->safe_psql('filled', q{SELECT spent_usd = (SELECT sum(cost_usd) FROM maester.usage)
		FROM maester.budget_status}), 't', "the budget counts the old ledger rows");
	is($node->safe_psql('filled',
		q{SELECT (r ->> 'content_match') FROM maester.capture c, maester.replay(c.request_id) r
		   WHERE c.prompt_name IS NULL ORDER BY c.ts LIMIT 1}), 'true', 'an old capture replays');
	is($node->safe_psql('filled', q{SELECT passed FROM maester.eval_run('suite', 'v2', 'mock-1')}), '2',
		'an old evaluation suite runs (its llm_rubric graded by calls)');
	$node->safe_psql('filled', q{ALTER SYSTEM RESET maester.job_workers; SELECT pg_reload_conf();});
	$node->poll_query_until('filled',
		q{SELECT count(*) = 0 FROM maester.job WHERE status = 'queued'})
	  or diag('the queued job did not run after the update');
	is($node->safe_psql('filled', q{SELECT status || ' ' || (result).content FROM maester.job
		WHERE request ->> 'prompt' = 'queued'}), 'done [Mock:mock-1] Generated response for prompt: queued',
		'the job queued under the old version ran under the new one');

	# 4. the updated database equals a new one
	$node->safe_psql('postgres', 'CREATE DATABASE fresh');
	$node->safe_psql('fresh', 'CREATE EXTENSION maester');
	for my $fact (sort keys %facts)
	{
		is($node->safe_psql('filled', $facts{$fact}), $node->safe_psql('fresh', $facts{$fact}),
			"updated and new databases agree: $fact");
	}

	# 5. the old version's dump restores into the current version
	$node->safe_psql('postgres', 'CREATE DATABASE restored');
	{
		local $ENV{PGOPTIONS} = '-c session_replication_role=replica';
		$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('restored'), $dump ],
			"the $old dump restores into $current_version");
	}
	is($node->safe_psql('restored', q{SELECT extversion FROM pg_extension WHERE extname = 'maester'}),
		$current_version, 'the restored database has the current version');
	is($node->safe_psql('restored', $render), $before{render}, 'the restored registry renders the old hash');
	is($node->safe_psql('restored', q{SELECT count(*) FROM maester.job}), '6', 'the jobs are restored');
	is($node->safe_psql('restored',
		q{SELECT count(*) FROM maester.llm_generate('after restore', 'mock-1')}), '1',
		'the restored database calls models');

	my $updated = schema_dump($node, 'filled');
	my $new = schema_dump($node, 'fresh');
	ok($updated eq $new, 'the schema-only dumps of the updated and the new database are identical')
	  or diag(`diff -u @{[ $node->basedir ]}/filled.schema.sql @{[ $node->basedir ]}/fresh.schema.sql | head -40`);
	ok(!$node->log_contains('terminated by signal'), 'no process crashed');
	$node->stop;
}

$mock->stop;
done_testing();

# The library never runs against a catalog of another shape (catalog.c):
# with the current library and a catalog of every released version (its
# frozen install script), every C function of the extension -- called
# with plausible arguments -- and every C trigger refuses with 55000, the
# workers wait, nothing crashes; a catalog newer than the library is
# refused with the other hint; after ALTER EXTENSION maester UPDATE the
# same calls are served.
use strict;
use warnings;
use FindBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('mismatch');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
});
$node->start;

my ($current) = slurp_file("$FindBin::RealBin/../../maester.control") =~ /default_version\s*=\s*'([^']+)'/;
my @released = map { (split)[0] } grep { !/^#/ && /\S/ } split /\n/,
  slurp_file("$FindBin::RealBin/../../src/sql/released");

# Every C function of schema maester, called with a value of each argument's
# type; what it raised (SQLSTATE), or ok
my $probe = q{
CREATE FUNCTION pg_temp.probe() RETURNS TABLE (fn text, state text) LANGUAGE plpgsql AS $$
DECLARE
    p    record;
    args text;
BEGIN
    FOR p IN SELECT f.oid, f.proname, f.proargtypes
               FROM pg_proc f JOIN pg_language l ON l.oid = f.prolang
              WHERE f.pronamespace = 'maester'::regnamespace AND l.lanname = 'c'
                AND f.prorettype <> 'trigger'::regtype
              ORDER BY f.oid::regprocedure::text LOOP
        SELECT string_agg(CASE u.t
                   WHEN 'text'::regtype THEN quote_literal('x')
                   WHEN 'jsonb'::regtype THEN quote_literal('{}')
                   WHEN 'jsonb[]'::regtype THEN quote_literal('{"{}"}')
                   WHEN 'integer'::regtype THEN '1'
                   WHEN 'bigint'::regtype THEN '1'
                   WHEN 'boolean'::regtype THEN 'false'
                   WHEN 'uuid'::regtype THEN quote_literal(gen_random_uuid()::text)
                   WHEN 'interval'::regtype THEN quote_literal('1 day')
                   WHEN 'timestamp with time zone'::regtype THEN quote_literal('now')
                   ELSE 'NULL' END || '::' || format_type(u.t, NULL), ', ' ORDER BY u.i)
          INTO args
          FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS u(t, i);
        fn := p.oid::regprocedure::text;
        BEGIN
            EXECUTE format('SELECT * FROM maester.%I(%s)', p.proname, coalesce(args, ''));
            state := 'ok';
        EXCEPTION WHEN OTHERS THEN
            state := SQLSTATE;
        END;
        RETURN NEXT;
    END LOOP;
    -- the C triggers
    BEGIN
        INSERT INTO maester.prompt (name) VALUES ('probe');
        INSERT INTO maester.prompt_version (name, version, template) VALUES ('probe', 'v1', 'x');
        state := 'ok';
    EXCEPTION WHEN OTHERS THEN
        state := SQLSTATE;
    END;
    fn := 'trigger prompt_version_guard';
    RETURN NEXT;
    BEGIN
        INSERT INTO maester.route (name) VALUES ('probe');
        state := 'ok';
    EXCEPTION WHEN OTHERS THEN
        state := SQLSTATE;
    END;
    fn := 'trigger cache_invalidate';
    RETURN NEXT;
END $$;
};

for my $old (@released)
{
	my $db = "v$old";
	$db =~ s/\./_/g;
	$node->safe_psql('postgres', qq{CREATE DATABASE $db});
	$node->safe_psql($db, qq{CREATE EXTENSION maester VERSION '$old'});
	# (the launcher looks at every database when it starts)
	my $log_offset = -s $node->logfile;
	$node->restart;

	my $result = $node->safe_psql($db, $probe . q{SELECT fn || ' ' || state FROM pg_temp.probe()});
	my @lines = split /\n/, $result;
	cmp_ok(scalar(@lines), '>', 10, "the $old catalog has C functions to probe");
	my @served = grep { !/ 55000$/ } @lines;
	is(join("\n", @served), '', "every C function and trigger refuses the $old catalog with 55000");

	my ($ret, $out, $err) = $node->psql($db, q{SELECT maester.check_name('prompt', 'ok')});
	like($err, qr/the maester library \Q$current\E does not serve the catalog of version \Q$old\E/,
		'the error names both versions');
	like($err, qr/HINT:\s+Run ALTER EXTENSION maester UPDATE/, 'and says what to do');
	ok($node->wait_for_log(qr/maester worker for database \d+ waits/, $log_offset),
		'the ledger worker waits for the update');

	# a catalog newer than the library: the other hint
	$node->safe_psql($db, q{UPDATE pg_extension SET extversion = '99.0.0' WHERE extname = 'maester'});
	($ret, $out, $err) = $node->psql($db, q{SELECT * FROM maester.llm_generate('x', 'gpt-4.1-mini')});
	like($err, qr/HINT:\s+Install maester 99\.0\.0 and restart the server/,
		'a newer catalog asks for its library');
	$node->safe_psql($db, qq{UPDATE pg_extension SET extversion = '$old' WHERE extname = 'maester'});

	# updated: served
	$node->safe_psql($db, 'ALTER EXTENSION maester UPDATE');
	$result = $node->safe_psql($db, $probe . q{SELECT fn || ' ' || state FROM pg_temp.probe()});
	my @refused = grep { / 55000$/ } split /\n/, $result;
	is(join("\n", @refused), '', "after the update from $old no function refuses");
	is($node->safe_psql($db, q{SELECT maester.check_name('prompt', 'ok')}), 'ok', 'a function works');
}

ok(!$node->log_contains('terminated by signal'), 'no process crashed');
$node->stop;
done_testing();

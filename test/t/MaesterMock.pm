# Start and query the mock provider (test/mock/mock_llm.py) from TAP tests.
package MaesterMock;

use strict;
use warnings;
use File::Basename qw(dirname);
use File::Spec;
use File::Temp qw(tempdir);
use HTTP::Tiny;
use JSON::PP;
use Time::HiRes qw(usleep);

my $script = File::Spec->rel2abs(
	File::Spec->catfile(dirname(__FILE__), '..', 'mock', 'mock_llm.py'));

# MaesterMock->start(@mock_args): a running mock; its url is ->{url}
sub start
{
	my ($class, @args) = @_;
	my $dir = tempdir(CLEANUP => 1);
	my $portfile = "$dir/port";
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>', '/dev/null');
		exec('/usr/bin/python3', $script, '--port', '0', '--port-file', $portfile, @args)
		  or die "exec: $!";
	}
	for (1 .. 200)
	{
		last if -s $portfile;
		usleep(50_000);
	}
	open(my $fh, '<', $portfile) or die "mock did not start";
	my $port = <$fh>;
	chomp $port;
	close $fh;
	return bless { pid => $pid, url => "http://127.0.0.1:$port" }, $class;
}

sub url { return $_[0]->{url} }

# GET a /_mock/ path, decoded
sub get
{
	my ($self, $path) = @_;
	my $r = HTTP::Tiny->new(timeout => 10)->get($self->{url} . $path);
	die "mock $path: $r->{status}" unless $r->{success};
	return decode_json($r->{content});
}

sub stats { return $_[0]->get('/_mock/stats') }

# Wait (up to $secs) until $cond->() is true; returns whether it became so
sub wait_for
{
	my ($self, $cond, $secs) = @_;
	for (1 .. ($secs * 50))
	{
		return 1 if $cond->();
		usleep(20_000);
	}
	return 0;
}

sub stop
{
	my ($self) = @_;
	if ($self->{pid})
	{
		kill 'TERM', $self->{pid};
		waitpid($self->{pid}, 0);
		$self->{pid} = undef;
	}
}

sub DESTROY { $_[0]->stop }

1;

/*
 * handoff_floor: the process hand-offs' part of test/bench/gateway.sh.
 * A call hands its PENDING row to the resident worker and sleeps until the
 * worker says it is durable, then does the same with its SETTLE row: two
 * round trips between two processes, each a wake-up of a sleeping process
 * on the other side.  This program makes those round trips with nothing
 * else in them, the way PostgreSQL 15's latches do it on Linux: the waker
 * sends SIGURG with kill(); the sleeper waits in epoll_wait() on a
 * signalfd, and reads the signalfd when woken.
 *
 * A parent and a child ping-pong N times; the parent prints each round
 * trip's latency in microseconds, one per line.
 *
 *   handoff_floor N
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* A signalfd for SIGURG (blocked, so it is only ever read) in an epoll set */
static int
wait_set(int *sfd)
{
	sigset_t	mask;
	struct epoll_event ev = {.events = EPOLLIN};
	int			ep;

	sigemptyset(&mask);
	sigaddset(&mask, SIGURG);
	*sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (*sfd < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, *sfd, &ev) != 0)
	{
		perror("handoff_floor");
		exit(1);
	}
	return ep;
}

/*
 * Sleep until woken, and drain the signalfd, as a latch wait does.  The
 * other side is gone if nothing comes for 10 s: give up rather than hang.
 */
static void
sleep_until_woken(int ep, int sfd)
{
	struct epoll_event ev;
	struct signalfd_siginfo info[8];
	int			n;

	while ((n = epoll_wait(ep, &ev, 1, 10000)) != 1)
	{
		if (n == 0 || errno != EINTR)
		{
			fprintf(stderr, "handoff_floor: no wake-up for 10 s (the other process is gone?)\n");
			exit(1);
		}
	}
	while (read(sfd, info, sizeof(info)) > 0)
		;
}

/* Wake `pid`; it must still be there */
static void
wake(pid_t pid)
{
	if (kill(pid, SIGURG) != 0)
	{
		perror("handoff_floor: kill");
		exit(1);
	}
}

int
main(int argc, char **argv)
{
	sigset_t	mask;
	pid_t		child;
	pid_t		parent = getpid();
	int			n;
	int			ep;
	int			sfd;

	if (argc != 2 || (n = atoi(argv[1])) <= 0)
	{
		fprintf(stderr, "usage: handoff_floor N\n");
		return 2;
	}
	sigemptyset(&mask);
	sigaddset(&mask, SIGURG);
	sigprocmask(SIG_BLOCK, &mask, NULL);	/* inherited by the child */

	child = fork();
	if (child < 0)
	{
		perror("fork");
		return 1;
	}
	ep = wait_set(&sfd);
	if (child == 0)
	{
		/* the worker's side: woken, it wakes the caller back (and dies with it) */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(1);
		for (int i = 0; i < n; i++)
		{
			sleep_until_woken(ep, sfd);
			wake(parent);
		}
		_exit(0);
	}

	for (int i = 0; i < n; i++)
	{
		struct timespec a,
					b;

		clock_gettime(CLOCK_MONOTONIC, &a);
		wake(child);
		sleep_until_woken(ep, sfd);
		clock_gettime(CLOCK_MONOTONIC, &b);
		printf("%.1f\n", (b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3);
	}
	waitpid(child, NULL, 0);
	return 0;
}

/*-------------------------------------------------------------------------
 *
 * kbpdf.c
 *	  The text of a PDF document, by Debian's pdftotext (poppler-utils) in
 *	  a child process: a PDF parser never runs in the backend's address
 *	  space.
 *
 * The bytes go to a file in a private directory (mode 0700) made under
 * the default tablespace's pgsql_tmp, whose name starts with pgsql_tmp
 * so that a server restart removes it if a crash left it behind.  The
 * child gets a fixed command line (PDFTOTEXT_PATH, options, the two file
 * names this file made: no user data), a minimal environment, stdin and
 * stdout on /dev/null, stderr to a file, no other descriptor, its own
 * process group, SIGKILL when the backend dies, and limits: address space
 * PDF_MEMORY_LIMIT, CPU PDF_CPU_SECONDS, output file size KB_MAX_CONTENT,
 * no core file.  The backend waits on its latch, so a query cancel or a
 * termination stops the wait at once; PDF_TIMEOUT_MS of wall-clock time
 * at most.  On every way out (success, error, cancel) the child is killed
 * and reaped if still there and the files and the directory are removed.
 * A missing pdftotext, a non-zero exit, a signal or the timeout: 38000
 * with an excerpt of pdftotext's stderr.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "kbtext.h"

/* Debian's pdftotext (package poppler-utils) */
#define PDFTOTEXT_PATH		"/usr/bin/pdftotext"
/* Wall-clock time a conversion may take */
#define PDF_TIMEOUT_MS		60000
/* CPU seconds (RLIMIT_CPU), a backstop should the backend be gone */
#define PDF_CPU_SECONDS		60
/* Address space of the child (RLIMIT_AS) */
#define PDF_MEMORY_LIMIT	((rlim_t) 1024 * 1024 * 1024)
/* How much of pdftotext's stderr an error shows */
#define PDF_STDERR_EXCERPT	400

/* The files of one conversion */
typedef struct PdfFiles
{
	char		dir[MAXPGPATH];
	char		in[MAXPGPATH];
	char		out[MAXPGPATH];
	char		err[MAXPGPATH];
	pid_t		pid;
} PdfFiles;

/* Writes all of data to a new file path (mode 0600) */
static void
write_file(const char *path, const char *data, int len)
{
	int			fd = OpenTransientFile(path, O_WRONLY | O_CREAT | O_EXCL | PG_BINARY);

	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", path)));
	while (len > 0)
	{
		ssize_t		n = write(fd, data, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not write file \"%s\": %m", path)));
		data += n;
		len -= n;
	}
	if (CloseTransientFile(fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not close file \"%s\": %m", path)));
}

/* Reads at most max bytes of a file (NUL-terminated); *len its length */
static char *
read_file(const char *path, int max, int *len, bool missing_ok)
{
	int			fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	StringInfoData buf;

	initStringInfo(&buf);
	if (fd < 0)
	{
		if (missing_ok && errno == ENOENT)
		{
			*len = 0;
			return buf.data;
		}
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\": %m", path)));
	}
	while (buf.len < max)
	{
		ssize_t		n;

		enlargeStringInfo(&buf, Min(65536, max - buf.len));
		n = read(fd, buf.data + buf.len, Min(65536, max - buf.len));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", path)));
		if (n == 0)
			break;
		buf.len += n;
		buf.data[buf.len] = '\0';
		CHECK_FOR_INTERRUPTS();
	}
	CloseTransientFile(fd);
	*len = buf.len;
	return buf.data;
}

/* The child: limits, descriptors, then pdftotext (async-signal-safe only) */
static void
pdf_child(const PdfFiles *f)
{
	static char *const envp[] = {"LANG=C", "PATH=/usr/bin:/bin", NULL};
	char	   *argv[] = {"pdftotext", "-enc", "UTF-8", "-eol", "unix",
	(char *) f->in, (char *) f->out, NULL};
	struct rlimit as = {PDF_MEMORY_LIMIT, PDF_MEMORY_LIMIT};
	struct rlimit cpu = {PDF_CPU_SECONDS, PDF_CPU_SECONDS + 1};
	struct rlimit fsize = {(rlim_t) KB_MAX_CONTENT, (rlim_t) KB_MAX_CONTENT};
	struct rlimit core = {0, 0};
	sigset_t	none;
	int			fd;

#ifdef __linux__
	(void) prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
	(void) setpgid(0, 0);
	for (int sig = 1; sig < NSIG; sig++)
		(void) signal(sig, SIG_DFL);
	sigemptyset(&none);
	(void) sigprocmask(SIG_SETMASK, &none, NULL);
	if (setrlimit(RLIMIT_AS, &as) != 0 || setrlimit(RLIMIT_CPU, &cpu) != 0 ||
		setrlimit(RLIMIT_FSIZE, &fsize) != 0 || setrlimit(RLIMIT_CORE, &core) != 0)
		_exit(126);
	fd = open("/dev/null", O_RDWR);
	if (fd < 0 || dup2(fd, 0) < 0 || dup2(fd, 1) < 0)
		_exit(126);
	fd = open(f->err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || dup2(fd, 2) < 0)
		_exit(126);
	/* nothing of the backend's (client socket, relation files) */
	for (fd = 3; fd < 1024; fd++)
		(void) close(fd);
	execve(PDFTOTEXT_PATH, argv, envp);
	_exit(127);
}

/* pdftotext's stderr, printable ASCII, cut short, for a message */
static char *
stderr_excerpt(const PdfFiles *f)
{
	int			len;
	char	   *s = read_file(f->err, PDF_STDERR_EXCERPT, &len, true);

	for (int i = 0; i < len; i++)
		if ((unsigned char) s[i] < 0x20 || (unsigned char) s[i] >= 0x7f)
			s[i] = (s[i] == '\n') ? ' ' : '?';
	while (len > 0 && s[len - 1] == ' ')
		s[--len] = '\0';
	return len > 0 ? s : "(nothing on stderr)";
}

/* Waits for the child, a cancel or the timeout; its exit status */
static int
pdf_wait(PdfFiles *f)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), PDF_TIMEOUT_MS);
	long		delay = 1;

	for (;;)
	{
		int			status;
		pid_t		r = waitpid(f->pid, &status, WNOHANG);

		if (r == f->pid)
		{
			f->pid = 0;
			return status;
		}
		if (r < 0 && errno != EINTR)
			ereport(ERROR,
					(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
					 errmsg("could not wait for pdftotext: %m")));
		/* (a system error, not the document's: the worker tries again later) */
		if (GetCurrentTimestamp() >= deadline)
			ereport(ERROR,
					(errcode(ERRCODE_IO_ERROR),
					 errmsg("pdftotext did not finish within %d seconds", PDF_TIMEOUT_MS / 1000)));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 delay, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		delay = Min(delay * 2, 20);
	}
}

/* Runs pdftotext on the files made; the text (UTF-8) */
static char *
pdf_run(PdfFiles *f, const char *data, int len, int *out_len)
{
	int			status;

	write_file(f->in, data, len);
	f->pid = fork();
	if (f->pid == 0)
		pdf_child(f);
	if (f->pid < 0)
	{
		f->pid = 0;
		ereport(ERROR,
				(errcode(ERRCODE_IO_ERROR),
				 errmsg("could not start pdftotext: %m")));
	}
	status = pdf_wait(f);
	if (WIFSIGNALED(status))
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("pdftotext was terminated by signal %d", WTERMSIG(status)),
				 errdetail("pdftotext said: %s", stderr_excerpt(f)),
				 errhint("It may have reached its limits of %d CPU seconds, %d MB of memory or %d MB of output.",
						 PDF_CPU_SECONDS, (int) (PDF_MEMORY_LIMIT >> 20), KB_MAX_CONTENT >> 20)));
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("pdftotext could not convert the document (exit status %d)",
						WIFEXITED(status) ? WEXITSTATUS(status) : -1),
				 errdetail("pdftotext said: %s", stderr_excerpt(f))));
	return read_file(f->out, KB_MAX_CONTENT, out_len, false);
}

/*
 * The text of the PDF document data[0..len), UTF-8 as pdftotext writes it
 * (pages separated by form feeds), palloc'd; *out_len its length.
 */
char *
kb_pdf_text(const char *data, int len, int *out_len)
{
	PdfFiles	f;
	char	   *base;
	char	   *volatile text = NULL;

	if (access(PDFTOTEXT_PATH, X_OK) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("could not run \"%s\": %m", PDFTOTEXT_PATH),
				 errhint("Install Debian's poppler-utils package on the database server.")));
	memset(&f, 0, sizeof(f));
	base = psprintf("%s/base/%s", DataDir, PG_TEMP_FILES_DIR);
	if (MakePGDirectory(base) < 0 && errno != EEXIST)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create directory \"%s\": %m", base)));
	snprintf(f.dir, sizeof(f.dir), "%s/%smaester_pdf.XXXXXX", base, PG_TEMP_FILE_PREFIX);
	if (mkdtemp(f.dir) == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create directory \"%s\": %m", f.dir)));
	snprintf(f.in, sizeof(f.in), "%s/in.pdf", f.dir);
	snprintf(f.out, sizeof(f.out), "%s/out.txt", f.dir);
	snprintf(f.err, sizeof(f.err), "%s/stderr.txt", f.dir);

	PG_TRY();
	{
		text = pdf_run(&f, data, len, out_len);
	}
	PG_FINALLY();
	{
		if (f.pid > 0)
		{
			(void) kill(-f.pid, SIGKILL);
			(void) kill(f.pid, SIGKILL);
			while (waitpid(f.pid, NULL, 0) < 0 && errno == EINTR)
				;
		}
		(void) unlink(f.in);
		(void) unlink(f.out);
		(void) unlink(f.err);
		(void) rmdir(f.dir);
	}
	PG_END_TRY();
	return text;
}

/*
 * preload_fix.c -- preloaded right after the ASan runtime (run.sh).
 *
 * Without it the backend hangs at startup: libgpg-error's constructor
 * (loaded with postgres's libraries, before ASan has initialized) calls
 * bindtextdomain(), which holds glibc's _nl_state_lock while it mallocs;
 * that first malloc initializes ASan, whose interceptor setup calls
 * dlerror() -> dcgettext(), taking and releasing the same lock again and
 * leaving it corrupt; postgres's own bindtextdomain() in main() then
 * waits on it forever.  This dlerror() answers NULL to the ASan runtime
 * (which only wants it for verbose messages) without touching gettext,
 * and is glibc's for everyone else.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

static int
from_asan(const char *path)
{
	static const char needle[] = "libclang_rt.asan";

	for (const char *p = path; p && *p; p++)
	{
		size_t		i = 0;

		while (needle[i] && p[i] == needle[i])
			i++;
		if (needle[i] == '\0')
			return 1;
	}
	return 0;
}

char *
dlerror(void)
{
	static char *(*real) (void);
	Dl_info		info;

	if (dladdr(__builtin_return_address(0), &info) && from_asan(info.dli_fname))
		return NULL;
	if (real == NULL)
		real = (char *(*) (void)) dlsym(RTLD_NEXT, "dlerror");
	return real();
}

/*-------------------------------------------------------------------------
 *
 * maester.h
 *	  Constants shared by the modules of the maester extension: sizes and
 *	  the public SQLSTATEs.  (Each module declares its functions in a
 *	  header of its own.)
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_H
#define MAESTER_H

/* longest prompt, version or label name, in characters */
#define MAESTER_NAME_MAXLEN 200

/* hex digits of a SHA-256 digest, without the terminating NUL */
#define MAESTER_SHA256_HEXLEN 64

/* longest provider name kept in shared memory, in bytes */
#define MAESTER_PROVIDER_NAMELEN 128

/*
 * Public SQLSTATEs (class MG, "maester gateway", and MB, "maester
 * budget"): a code keeps its meaning across versions.
 */
#define ERRCODE_MAESTER_PROVIDER_ERROR	MAKE_SQLSTATE('M','G','0','0','1')
#define ERRCODE_MAESTER_TIMEOUT			MAKE_SQLSTATE('M','G','0','0','2')
#define ERRCODE_MAESTER_UNREACHABLE		MAKE_SQLSTATE('M','G','0','0','3')
#define ERRCODE_MAESTER_BAD_RESPONSE	MAKE_SQLSTATE('M','G','0','0','4')
#define ERRCODE_MAESTER_UNAVAILABLE		MAKE_SQLSTATE('M','G','0','0','5')
#define ERRCODE_MAESTER_LEDGER_UNAVAILABLE MAKE_SQLSTATE('M','G','0','0','6')
/* the provider's key is not available on the server (not the client's login: 28000) */
#define ERRCODE_MAESTER_NO_KEY			MAKE_SQLSTATE('M','G','0','0','7')
#define ERRCODE_MAESTER_BUDGET_EXCEEDED	MAKE_SQLSTATE('M','B','0','0','1')

#endif							/* MAESTER_H */

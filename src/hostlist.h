/*-------------------------------------------------------------------------
 *
 * hostlist.h
 *	  Host lists of the egress and key settings: parsing and matching.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_HOSTLIST_H
#define MAESTER_HOSTLIST_H

extern bool hostlist_next(const char **p, const char **start, size_t *len);
extern bool hostlist_entry_valid(const char *e, size_t len);
extern bool hostlist_entry_matches(const char *e, size_t len, const char *host, int port);
extern bool hostlist_match(const char *list, const char *host, int port);
extern bool hostlist_valid(const char *list, char **bad);
extern bool keyhosts_key_name_ok(const char *name);
extern bool keyhosts_entry(const char *e, size_t len, const char **name, size_t *nlen,
						   const char **host, size_t *hlen);
extern bool keyhosts_valid(const char *list, char **bad);

#endif							/* MAESTER_HOSTLIST_H */

/*-------------------------------------------------------------------------
 *
 * catalog.h
 *	  The version of maester's catalog that the library runs against.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_CATALOG_H
#define MAESTER_CATALOG_H

extern void catalog_init(void);
extern void maester_check_catalog(void);
extern bool maester_catalog_served(char **why);

#endif							/* MAESTER_CATALOG_H */

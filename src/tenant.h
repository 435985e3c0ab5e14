/*-------------------------------------------------------------------------
 *
 * tenant.h
 *	  Tenants bound to roles: which tenant this session acts as.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_TENANT_H
#define MAESTER_TENANT_H

#include "utils/guc.h"

extern void tenant_init(void);
extern bool maester_is_admin(Oid user);
extern const char *maester_current_tenant(void);
extern bool tenant_check_setting(const char *tenant, GucSource source);
extern void maester_set_tenant(const char *tenant, GucAction action);

#endif							/* MAESTER_TENANT_H */

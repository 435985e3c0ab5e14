/*-------------------------------------------------------------------------
 *
 * message.h
 *	  A conversation's pieces shared by the provider adapters (message.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_MESSAGE_H
#define MAESTER_MESSAGE_H

#include "provider.h"

extern char *message_tool_calls_json(List *calls);
extern bool messages_mention_json(const GenRequest *req);
extern char *messages_canonical(List *messages);

#endif							/* MAESTER_MESSAGE_H */

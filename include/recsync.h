/*
 * recsync — a local-first, end-to-end-encrypted record sync engine.
 *
 * This header is the whole public API; what is not reachable from here is
 * not API. See docs/conventions.md for error codes, ownership and naming.
 */
#ifndef RECSYNC_H
#define RECSYNC_H

#include "recsync/common.h"
#include "recsync/store.h"
#include "recsync/sync.h"
#include "recsync/snapshot.h"
#include "recsync/kv.h"
#include "recsync/history.h"
#include "recsync/devices.h"
#include "recsync/reidentify.h"
#include "recsync/keys.h"

#endif

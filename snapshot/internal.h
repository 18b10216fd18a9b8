/* snapshot internals: shared between the files of snapshot/ only. */
#ifndef KINDLING_SNAPSHOT_INTERNAL_H
#define KINDLING_SNAPSHOT_INTERNAL_H

#define LOG_COMPONENT "snapshot"
#include "common/common.h"
#include "snapshot/snapshot.h"

/* The page size the server fills guest memory in. */
#define SNAPSHOT_PAGE 4096u

#endif

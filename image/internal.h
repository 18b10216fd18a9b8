/* image internals: shared between the files of image/ only. */
#ifndef KINDLING_IMAGE_INTERNAL_H
#define KINDLING_IMAGE_INTERNAL_H

#define LOG_COMPONENT "image"
#include "common/common.h"
#include "image/image.h"

#endif

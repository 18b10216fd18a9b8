/* placement internals: shared between the files of placement/ only.
 *
 *   bloom.c     the L1 summary (pure)
 *   placement.c cells, shards, scoring, the choice (pure)
 *   records.c   the JSON the service reads and is sent: POST /v1/place's
 *               body, host registrations, reservation lists (pure, fuzzed)
 *   service.c   the placement service: etcd, manifests, reservations, the
 *               burst bucket, HTTP answers
 */
#ifndef KINDLING_PLACEMENT_INTERNAL_H
#define KINDLING_PLACEMENT_INTERNAL_H

#undef LOG_COMPONENT
#define LOG_COMPONENT "placement"

#endif

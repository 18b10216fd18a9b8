#!/usr/bin/env bash
# kindling's cold-start benchmark suite, side by side with podman, the eager
# skopeo + umoci pull and a page-cached chroot, in one run:
#
#   bench/run.sh --quick                 # the Python workload, < 5 minutes
#   bench/run.sh                         # every workload, < 30 minutes
#   bench/run.sh coldstart --workloads node,java --reps 5
#   bench/run.sh --help                  # scenarios, workloads, options
#
# Installs what it needs (scripts/setup.sh: apt packages, the build) unless
# KINDLING_BUILD_DIR names a build to use.  Writes results.json, report.md
# and PNG plots to --out (default bench-results/DATE).  Needs root.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${KINDLING_BUILD_DIR:-}" ]; then
  build=$KINDLING_BUILD_DIR
else
  build=$top/build
  "$top/scripts/setup.sh" "$build" >/dev/null
fi
exec python3 "$top/bench/suite/main.py" --build "$build" "$@"

#!/bin/sh
# Host check before installing or upgrading a node: wraps `corelog doctor`.
# Usage: tuning/doctor.sh [DATA_DIR]   (default /var/lib/corelog)
# Exit code: 0 no FAIL, 1 some check failed (the node will not run or not be durable), 2 usage.
set -eu
DATA_DIR=${1:-/var/lib/corelog}
CORELOG=${CORELOG:-corelog}
exec "$CORELOG" doctor --data-dir "$DATA_DIR"

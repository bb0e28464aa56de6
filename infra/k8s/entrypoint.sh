#!/bin/sh
# Start one Bytewax process of the lifecycle-scoring cluster in a StatefulSet pod.
#
# Mounted from the ConfigMap lifecycle-entrypoint (infra/k8s/base/generated/, written by infra/k8s/generate.py).
# Tested by tests/infra/test_deploy_k8s.py, which runs this script with a stand-in `lifecycle`.
#
# Inputs (env): POD_NAME and POD_NAMESPACE (downward API), CLUSTER_SIZE (= spec.replicas), CLUSTER_SERVICE
# (the headless Service), CLUSTER_PORT (Bytewax's cluster port), and LIFECYCLE_* from the ConfigMap/Secret.
set -eu

: "${POD_NAME:?POD_NAME (downward API metadata.name) is required}"
: "${POD_NAMESPACE:?POD_NAMESPACE (downward API metadata.namespace) is required}"
: "${CLUSTER_SIZE:?CLUSTER_SIZE (= the StatefulSet replicas) is required}"
: "${CLUSTER_SERVICE:?CLUSTER_SERVICE (the headless Service name) is required}"
: "${CLUSTER_PORT:?CLUSTER_PORT (the Bytewax cluster port) is required}"

# A StatefulSet pod is named <statefulset>-<ordinal>: the ordinal is the Bytewax process id.
statefulset="${POD_NAME%-*}"
process_id="${POD_NAME##*-}"
case "$process_id" in
  '' | *[!0-9]*) echo "entrypoint: cannot read an ordinal from POD_NAME=$POD_NAME" >&2; exit 64 ;;
esac
if [ "$process_id" -ge "$CLUSTER_SIZE" ]; then
  # Scaled past CLUSTER_SIZE without changing it: this pod would never be part of the cluster.
  echo "entrypoint: ordinal $process_id is not below CLUSTER_SIZE=$CLUSTER_SIZE: change both together" >&2
  exit 64
fi

# Every member in process-id order, by its stable DNS name under the headless Service. The Service
# publishes not-ready addresses, so the names resolve while the members are still connecting.
addresses=""
i=0
while [ "$i" -lt "$CLUSTER_SIZE" ]; do
  addresses="${addresses:+$addresses,}$statefulset-$i.$CLUSTER_SERVICE.$POD_NAMESPACE.svc:$CLUSTER_PORT"
  i=$((i + 1))
done

# One recovery partition per pod, on the pod's own volume: part-<ordinal> of CLUSTER_SIZE, created once.
# The cluster as a whole must hold every partition; a single partition created on each pod would send
# every snapshot to whichever process owns "part-0".
if [ -n "${LIFECYCLE_RECOVERY_DIR:-}" ]; then
  python - "$LIFECYCLE_RECOVERY_DIR" "$process_id" "$CLUSTER_SIZE" <<'EOF'
import shutil
import sys
import tempfile
from pathlib import Path

from bytewax.recovery import init_db_dir

recovery, process_id, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if not any(recovery.glob("part-*.sqlite3")):
    recovery.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=recovery) as tmp:
        init_db_dir(Path(tmp), size)
        shutil.move(str(Path(tmp) / f"part-{process_id}.sqlite3"), recovery / f"part-{process_id}.sqlite3")
    print(f"entrypoint: created recovery partition {process_id} of {size} in {recovery}", file=sys.stderr)
EOF
fi

echo "entrypoint: process $process_id of $CLUSTER_SIZE, cluster $addresses" >&2
exec lifecycle run --process-id "$process_id" --addresses "$addresses" "$@"

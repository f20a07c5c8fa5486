#!/usr/bin/env bash
# Validates the manifests in this directory, offline:
#  1. against the Kubernetes API schemas of one pinned version (kubernetes-validate ships them;
#     --strict also rejects unknown fields). Errors and warnings (e.g. an unknown kind) fail.
#  2. against each other and the irisd.toml they ship (check-coherence.py): ConfigMap and
#     Secret references, listener tokens, ports, probes, spool volume, Kafka vs intake shape.
# Needs: pip install kubernetes-validate==1.37.0 (brings PyYAML). Python >= 3.11 (tomllib).
# Another version: K8S_VERSION=1.31.0 deploy/k8s/validate.sh
set -euo pipefail
K8S_VERSION="${K8S_VERSION:-1.33.0}"
cd "$(dirname "$0")"

# The module rather than the console script: the same python3 as the checker, whatever PATH has.
if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  echo "kubernetes-validate not found: python3 -m pip install kubernetes-validate==1.37.0" >&2
  exit 2
fi

manifests=(*.yaml)
rc=0
out=$(python3 -m kubernetes_validate --strict --kubernetes-version "$K8S_VERSION" "${manifests[@]}" 2>&1) || rc=$?
printf '%s\n' "$out"
if [ "$rc" -ne 0 ] || grep -qvE '^INFO ' <<<"$out"; then
  echo "k8s manifests: schema validation against Kubernetes $K8S_VERSION FAILED" >&2
  exit 1
fi
# Every document must have been checked (a YAML document without kind is skipped silently).
docs=$(python3 -c 'import sys,yaml; print(sum(1 for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d))' "${manifests[@]}")
passed=$(grep -c '^INFO .* passed for resource' <<<"$out")
if [ "$docs" -ne "$passed" ]; then
  echo "k8s manifests: $docs documents but $passed validated" >&2
  exit 1
fi

python3 check-coherence.py
echo "k8s manifests: $passed resources valid against Kubernetes $K8S_VERSION"

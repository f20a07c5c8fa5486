#!/usr/bin/env bash
# Runs the irisd image with podman the way the intake-fed StatefulSet runs it, against the mock
# partner, all on the host's loopback (host networking), and checks that it works:
#  - the mock partner runs from the same image (`irisd mock-partner`, its CA in a temp dir);
#  - irisd runs with the image's own ENTRYPOINT and CMD, the shipped configuration of
#    deploy/k8s/configmap-intake.yaml with only its addresses rewritten (listeners on free
#    loopback ports, the partner URLs to the mock, the mock's CA added), the tokens and the
#    partner secret as files mounted at /etc/irisd/secrets, the spool in the image's own
#    state directory, as uid 65532, all capabilities dropped;
#  - /healthz and /readyz answer without a token, /metrics only with the admin token;
#  - the intake refuses a POST without the intake token and accepts N events with it;
#  - the mock's GET /_mock/stats (HTTPS, with the CA) shows the N users received;
#  - `irisd status` works inside the container; SIGTERM stops it with exit code 0.
#
# Usage: deploy/container/smoke-test.sh [IMAGE]   (default localhost/irisd:scratch)
# READ_ONLY=1 runs irisd as the manifests do instead: read-only root filesystem, /tmp a tmpfs,
# the spool on a mounted volume (owned by 65532).
# Needs podman, curl and python3; run as root. Exits non-zero on any failure and prints the
# containers' logs. Extra podman options: PODMAN_GLOBAL_OPTS, PODMAN_RUN_OPTS. If the first
# container cannot start with the defaults, the script prints the error and retries with
# "--runtime runc" and explicit ulimits (what a sandbox without a full cgroup v2 hierarchy
# or with low rlimits needs), and says so.
set -euo pipefail

IMAGE="${1:-localhost/irisd:scratch}"
EVENTS="${EVENTS:-50}"
HERE="$(cd "$(dirname "$0")" && pwd)"
CONFIGMAP="$HERE/../k8s/configmap-intake.yaml"
MOCK=irisd-smoke-mock
DAEMON=irisd-smoke
read -r -a GLOBAL <<<"${PODMAN_GLOBAL_OPTS:-}"
read -r -a RUNOPTS <<<"${PODMAN_RUN_OPTS:-}"

say() { printf '== %s\n' "$*"; }
fail() {
  printf 'FAILED: %s\n' "$*" >&2
  for c in "$MOCK" "$DAEMON"; do
    if podman "${GLOBAL[@]}" container exists "$c" 2>/dev/null; then
      printf -- '--- logs of %s\n' "$c" >&2
      podman "${GLOBAL[@]}" logs "$c" 2>&1 | tail -40 >&2 || true
    fi
  done
  exit 1
}

W="$(mktemp -d)"
cleanup() {
  podman "${GLOBAL[@]}" rm -f -t 2 "$DAEMON" "$MOCK" >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
podman "${GLOBAL[@]}" rm -f -t 2 "$DAEMON" "$MOCK" >/dev/null 2>&1 || true
podman image exists "$IMAGE" || fail "no image $IMAGE (build it with deploy/container/build-scratch.sh)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MOCK_PORT=$(free_port); INTAKE_PORT=$(free_port); ADMIN_PORT=$(free_port)
while [ "$INTAKE_PORT" = "$MOCK_PORT" ] || [ "$ADMIN_PORT" = "$MOCK_PORT" ] || [ "$ADMIN_PORT" = "$INTAKE_PORT" ]; do
  INTAKE_PORT=$(free_port); ADMIN_PORT=$(free_port)
done
rand() { head -c 24 /dev/urandom | base64 | tr -d '/+='; }
PARTNER_SECRET=$(rand); INTAKE_TOKEN=$(rand); ADMIN_TOKEN=$(rand)

# --- the secrets, as the Secret mounts them (files readable by uid 65532 only) ----------------
mkdir -p "$W/secrets" "$W/mock"
printf '%s\n' "$PARTNER_SECRET" >"$W/secrets/partner-a"
printf '%s\n' "$INTAKE_TOKEN" >"$W/secrets/intake-token"
printf '%s\n' "$ADMIN_TOKEN" >"$W/secrets/admin-token"
chown -R 65532:65532 "$W/secrets" "$W/mock"
chmod 0700 "$W/secrets" && chmod 0600 "$W/secrets"/*

# --- the shipped intake configuration, addresses rewritten for loopback -------------------
python3 - "$CONFIGMAP" "$W/irisd.toml" "$INTAKE_PORT" "$ADMIN_PORT" "$MOCK_PORT" <<'PY'
import sys, yaml
src, dst, intake, admin, mock = sys.argv[1:]
(cm,) = [d for d in yaml.safe_load_all(open(src)) if d and d["kind"] == "ConfigMap"]
toml = cm["data"]["irisd.toml"]
for old, new in (('listen = "0.0.0.0:9700"', f'listen = "127.0.0.1:{intake}"'),
                 ('listen = "0.0.0.0:9701"', f'listen = "127.0.0.1:{admin}"'),
                 ("https://partner.example/", f"https://127.0.0.1:{mock}/")):
    assert old in toml, f"{src}: {old!r} not found"
    toml = toml.replace(old, new)
# The mock's private CA for the (last, only) destination.
toml += '\n[destination.tls]\nca_file = "/etc/irisd/mock-ca.pem"\n'
open(dst, "w").write(toml)
PY
chmod 0644 "$W/irisd.toml"

run() { podman "${GLOBAL[@]}" run "${RUNOPTS[@]}" "$@"; }
state=()
if [ "${READ_ONLY:-0}" = 1 ]; then
  install -d -m 0700 -o 65532 -g 65532 "$W/state"
  state=(--read-only --tmpfs /tmp:mode=1777 -v "$W/state:/var/lib/irisd")
fi

# --- the mock partner, from the same image -------------------------------------------------
say "mock partner on 127.0.0.1:$MOCK_PORT"
if ! err=$(run -d --name "$MOCK" --network host -v "$W/mock:/mock" "$IMAGE" \
    mock-partner --listen "127.0.0.1:$MOCK_PORT" --tls-dir /mock/tls --client "iris:$PARTNER_SECRET" 2>&1); then
  say "podman run failed with the default options: $err"
  podman "${GLOBAL[@]}" rm -f "$MOCK" >/dev/null 2>&1 || true
  GLOBAL+=(--runtime runc)
  RUNOPTS+=(--ulimit nofile=16384:16384 --ulimit nproc=4096:4096)
  say "retrying with: podman ${GLOBAL[*]} run ${RUNOPTS[*]}"
  run -d --name "$MOCK" --network host -v "$W/mock:/mock" "$IMAGE" \
    mock-partner --listen "127.0.0.1:$MOCK_PORT" --tls-dir /mock/tls --client "iris:$PARTNER_SECRET" >/dev/null \
    || fail "podman run (mock partner)"
fi
for _ in $(seq 1 100); do
  [ -s "$W/mock/tls/ca.pem" ] && curl -fsS --cacert "$W/mock/tls/ca.pem" "https://127.0.0.1:$MOCK_PORT/_mock/stats" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS --cacert "$W/mock/tls/ca.pem" "https://127.0.0.1:$MOCK_PORT/_mock/stats" >/dev/null || fail "the mock partner did not come up"

# --- irisd, with the image's ENTRYPOINT and CMD --------------------------------------------
say "irisd: intake 127.0.0.1:$INTAKE_PORT, admin 127.0.0.1:$ADMIN_PORT"
run -d --name "$DAEMON" --network host \
  --cap-drop ALL --security-opt no-new-privileges "${state[@]}" \
  -v "$W/irisd.toml:/etc/irisd/irisd.toml:ro" \
  -v "$W/secrets:/etc/irisd/secrets:ro" \
  -v "$W/mock/tls/ca.pem:/etc/irisd/mock-ca.pem:ro" \
  "$IMAGE" >/dev/null || fail "podman run (irisd)"
say "image: $(podman image inspect --format '{{.Id}} user={{.Config.User}} entrypoint={{.Config.Entrypoint}} cmd={{.Config.Cmd}}' "$IMAGE")"

ADMIN="http://127.0.0.1:$ADMIN_PORT"
ready=""
for _ in $(seq 1 100); do
  ready=$(curl -sS "$ADMIN/readyz" 2>/dev/null) && [ -n "$ready" ] && break
  [ "$(podman "${GLOBAL[@]}" inspect -f '{{.State.Running}}' "$DAEMON")" = true ] || fail "irisd exited"
  sleep 0.1
done
code=$(curl -sS -o /dev/null -w '%{http_code}' "$ADMIN/readyz") || fail "GET /readyz"
say "GET /readyz -> $code $ready"
[ "$code" = 200 ] || fail "/readyz answered $code"
say "GET /healthz -> $(curl -sS -w ' %{http_code}' "$ADMIN/healthz")"
code=$(curl -sS -o /dev/null -w '%{http_code}' "$ADMIN/metrics")
say "GET /metrics without the admin token -> $code"
[ "$code" = 401 ] || fail "/metrics without a token answered $code, want 401"
code=$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $ADMIN_TOKEN" "$ADMIN/metrics")
say "GET /metrics with the admin token -> $code"
[ "$code" = 200 ] || fail "/metrics with the token answered $code"
say "user and process: $(podman "${GLOBAL[@]}" top "$DAEMON" user group args 2>/dev/null | tail -1 | tr -s ' ')"

# --- events in, users out ----------------------------------------------------------------------
python3 - "$EVENTS" >"$W/events.ndjson" <<'PY'
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"destination": "partner-a", "aam_uuid": str(19393572368547369350319949416899700000 + i),
                      "data_partner_uuid": "4250948725049857",
                      "segments": [{"segment_id": "14356", "status": "1", "time": "2016-07-27T16:17:22Z"}]}))
PY
INTAKE="http://127.0.0.1:$INTAKE_PORT/v1/events"
code=$(curl -sS -o /dev/null -w '%{http_code}' "$INTAKE" --data-binary @"$W/events.ndjson")
say "POST /v1/events without the intake token -> $code"
[ "$code" = 401 ] || fail "the intake accepted a POST without the token ($code)"
answer=$(curl -sS -w ' %{http_code}' -H "Authorization: Bearer $INTAKE_TOKEN" "$INTAKE" --data-binary @"$W/events.ndjson")
say "POST /v1/events ($EVENTS events) with the intake token -> $answer"
[ "$answer" = "{\"accepted\":$EVENTS} 202" ] || fail "intake answer: $answer"

stats=""
for _ in $(seq 1 150); do
  stats=$(curl -fsS --cacert "$W/mock/tls/ca.pem" "https://127.0.0.1:$MOCK_PORT/_mock/stats")
  users=$(jq -r .users_accepted <<<"$stats")
  [ "$users" -ge "$EVENTS" ] && break
  sleep 0.2
done
say "mock GET /_mock/stats -> $stats"
[ "$(jq -r .unique_users <<<"$stats")" = "$EVENTS" ] || fail "the mock received $(jq -r .unique_users <<<"$stats") distinct users, want $EVENTS"

say "irisd status (inside the container):"
podman "${GLOBAL[@]}" exec "$DAEMON" /irisd status --admin "127.0.0.1:$ADMIN_PORT" \
  --token-file /etc/irisd/secrets/admin-token || fail "irisd status"

# --- graceful stop -------------------------------------------------------------------------
podman "${GLOBAL[@]}" stop -t 30 "$DAEMON" >/dev/null
exit_code=$(podman "${GLOBAL[@]}" inspect -f '{{.State.ExitCode}}' "$DAEMON")
say "podman stop (SIGTERM) -> exit code $exit_code"
[ "$exit_code" = 0 ] || fail "irisd exited $exit_code on SIGTERM"
if podman "${GLOBAL[@]}" logs "$DAEMON" 2>&1 | grep -E ' (WARN|ERROR) ' >"$W/warnings"; then
  say "irisd logged warnings or errors:"; cat "$W/warnings"
fi
[ "${READ_ONLY:-0}" != 1 ] || say "spool files on the volume: $(ls "$W/state" | tr '\n' ' ')"
echo "smoke test passed: $IMAGE answered /readyz and delivered $EVENTS of $EVENTS users to the mock partner"

#!/usr/bin/env bash
# Builds the irisd image FROM scratch with buildah, without any registry: the given irisd
# binary, exactly the shared libraries it links (ldd) and its ELF interpreter, the system CA
# bundle, /etc/passwd and /etc/group with the non-root user 65532, an empty /tmp and the state
# directory /var/lib/irisd (65532, 0700). Its configuration (user, workdir, ports, entrypoint,
# cmd, env, labels) is the one deploy/Dockerfile declares: check-image-config.sh compares them.
#
# Usage: deploy/container/build-scratch.sh PATH/TO/irisd [IMAGE]   (default localhost/irisd:scratch)
# Prints the image id on stdout (progress on stderr). Rerunning replaces the tag; with the
# same binary and host libraries it gives the same image id (timestamps are pinned to
# SOURCE_DATE_EPOCH, 0 by default).
# Needs buildah (Debian: apt-get install buildah), ldd, readelf and strip (binutils), run as root or
# inside `buildah unshare`. Storage options come from the environment, e.g.
# BUILDAH_STORAGE_DRIVER=vfs (where overlay mounts are not allowed).
set -euo pipefail

BIN="${1:?usage: $0 PATH/TO/irisd [IMAGE]}"
IMAGE="${2:-localhost/irisd:scratch}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
WORKING_CONTAINER=irisd-scratch-build

# The contract shared with deploy/Dockerfile (see deploy/README.md, "The image contract").
IRISD_UID=65532
IRISD_GID=65532
STATE_DIR=/var/lib/irisd
ENV_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV_SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABELS=(
  "org.opencontainers.image.title=irisd"
  "org.opencontainers.image.description=Delivers Audience Manager segment qualifications to partners over OAuth 2.0 and HTTPS, the way IRIS does"
  "org.opencontainers.image.licenses=Apache-2.0"
)

log() { printf '%s\n' "$*" >&2; }

[ -f "$BIN" ] && [ -x "$BIN" ] || { log "not an executable file: $BIN"; exit 2; }
[ -f "$CA_BUNDLE" ] || { log "no CA bundle at $CA_BUNDLE (Debian: apt-get install ca-certificates)"; exit 2; }
for tool in buildah ldd readelf strip; do
  command -v "$tool" >/dev/null || { log "$tool not found"; exit 2; }
done
if [ "$(id -u)" != 0 ] && [ -z "${_IRISD_IN_UNSHARE:-}" ]; then
  # buildah mount needs root, or a user namespace where we are root.
  _IRISD_IN_UNSHARE=1 exec buildah unshare "$0" "$@"
fi
BIN="$(readlink -f "$BIN")"

STAGE="$(mktemp -d)"
cleanup() {
  buildah umount "$WORKING_CONTAINER" >/dev/null 2>&1 || true
  buildah rm "$WORKING_CONTAINER" >/dev/null 2>&1 || true
  rm -rf "$STAGE"
}
trap cleanup EXIT

# --- the root filesystem, staged with its final owners and modes -------------------------
# Stripped, as the Dockerfile does (STRIP=0 keeps the symbols and line tables).
if [ "${STRIP:-1}" = 1 ]; then
  strip -o "$STAGE/irisd" "$BIN" && chmod 0755 "$STAGE/irisd"
else
  install -m 0755 "$BIN" "$STAGE/irisd"
fi

# Every library ldd resolves, at the path the loader will look for it, plus the interpreter
# named in PT_INTERP. A library ldd cannot find fails the build.
if ldd "$BIN" 2>&1 | grep -q 'not found'; then
  log "ldd: unresolved libraries:"; ldd "$BIN" | grep 'not found' >&2; exit 1
fi
interp="$(readelf -l "$BIN" | sed -n 's/.*\[Requesting program interpreter: \(.*\)\]/\1/p')"
libs=()
[ -n "$interp" ] && libs+=("$interp")
while read -r lib; do libs+=("$lib"); done < <(ldd "$BIN" | awk '$2 == "=>" && $3 ~ /^\// {print $3}')
for lib in "${libs[@]}"; do
  install -D -m 0755 "$(readlink -f "$lib")" "$STAGE$lib"
  log "library: $lib"
done
# The interpreter is also reached through the canonical path ldd printed (e.g.
# /lib64/ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/...): both are regular files here.

install -d -m 0755 "$STAGE/etc" "$STAGE/etc/ssl/certs" "$STAGE/etc/irisd"
install -m 0644 "$CA_BUNDLE" "$STAGE/etc/ssl/certs/ca-certificates.crt"
cat >"$STAGE/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:$IRISD_UID:$IRISD_GID:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$STAGE/etc/group" <<EOF
root:x:0:
nobody:x:65534:
nonroot:x:$IRISD_GID:
EOF
# glibc's resolver: /etc/hosts first, then DNS (what distroless ships too).
printf 'hosts: files dns\n' >"$STAGE/etc/nsswitch.conf"
chmod 0644 "$STAGE/etc/passwd" "$STAGE/etc/group" "$STAGE/etc/nsswitch.conf"
install -d -m 1777 "$STAGE/tmp"
install -d -m 0700 -o "$IRISD_UID" -g "$IRISD_GID" "$STAGE$STATE_DIR"
install -d -m 0700 -o "$IRISD_UID" -g "$IRISD_GID" "$STAGE/home/nonroot"
chmod 0755 "$STAGE" "$STAGE/var" "$STAGE/var/lib" "$STAGE/home"

# --- the image ------------------------------------------------------------------------------
buildah rm "$WORKING_CONTAINER" >/dev/null 2>&1 || true
buildah from --name "$WORKING_CONTAINER" scratch >/dev/null
mnt="$(buildah mount "$WORKING_CONTAINER")"
# cp -a keeps the staged owners and modes (buildah copy would make everything root's).
cp -a "$STAGE/." "$mnt/"
buildah umount "$WORKING_CONTAINER" >/dev/null

label_args=()
for l in "${LABELS[@]}"; do label_args+=(--label "$l"); done
buildah config \
  --os linux --arch "$(buildah info --format '{{.host.arch}}')" \
  --user "$IRISD_UID:$IRISD_GID" \
  --workingdir "$STATE_DIR" \
  --port 9700/tcp --port 9701/tcp \
  --env "PATH=$ENV_PATH" \
  --env "SSL_CERT_FILE=$ENV_SSL_CERT_FILE" \
  "${label_args[@]}" \
  --entrypoint '["/irisd"]' \
  "$WORKING_CONTAINER"
# Set after the entrypoint, which would otherwise reset it.
buildah config --cmd '["run", "--config", "/etc/irisd/irisd.toml"]' "$WORKING_CONTAINER"

buildah commit --quiet --rm --timestamp "${SOURCE_DATE_EPOCH:-0}" --identity-label=false --format oci "$WORKING_CONTAINER" "$IMAGE" >/dev/null
trap 'rm -rf "$STAGE"' EXIT
buildah inspect --type image --format "{{.FromImageID}}{{println}}" "$IMAGE"

#!/usr/bin/env python3
"""Checks that an irisd image follows the image contract that deploy/Dockerfile declares.

The configuration (user, working directory, exposed ports, entrypoint, cmd, environment,
labels) is read from the final stage of deploy/Dockerfile and compared with the image's, field
by field: a value that differs, is missing, or is extra (an environment variable or label the
Dockerfile does not set) is an error. So the FROM scratch image and the distroless one can be
checked the same way, and must agree with each other.

With --rootfs (or --mount, which mounts a local image with podman) the files of the contract
are checked too: /irisd executable, the user in /etc/passwd and /etc/group, the state directory
owned by it with mode 0700, /tmp 1777, the CA bundle.

Usage:
  check-image-config.py IMAGE                 podman image inspect IMAGE
  check-image-config.py --mount IMAGE         ... and its files (podman image mount, root)
  check-image-config.py --inspect-json FILE   output of `podman image inspect`, `docker image
                                              inspect` or `skopeo inspect --config`
Exits 1 on any difference.
"""
import argparse
import json
import os
import pathlib
import shlex
import stat
import subprocess
import sys

DOCKERFILE = pathlib.Path(__file__).resolve().parent.parent / "Dockerfile"


def final_stage(text):
    """The instructions of the Dockerfile's last stage, as (KEYWORD, argument) pairs."""
    lines, cur = [], ""
    for raw in text.splitlines():
        s = raw.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        lines.append(cur + s)
        cur = ""
    stage = []
    for line in lines:
        kw, _, arg = line.partition(" ")
        kw = kw.upper()
        if kw == "FROM":
            stage = []
        stage.append((kw, arg.strip()))
    return stage


def pairs(arg):
    """ENV / LABEL arguments: k=v ... (quoted values allowed) or the old `k v` form."""
    words = shlex.split(arg)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words)


def expected_config(dockerfile):
    want = {"User": "", "WorkingDir": "", "ExposedPorts": set(), "Entrypoint": None, "Cmd": None,
            "Env": {}, "Labels": {}}
    for kw, arg in final_stage(dockerfile.read_text()):
        if kw == "USER":
            want["User"] = arg
        elif kw == "WORKDIR":
            want["WorkingDir"] = arg
        elif kw == "EXPOSE":
            want["ExposedPorts"] |= {p if "/" in p else f"{p}/tcp" for p in arg.split()}
        elif kw == "ENTRYPOINT":
            want["Entrypoint"] = json.loads(arg)
            want["Cmd"] = None  # ENTRYPOINT resets an inherited CMD
        elif kw == "CMD":
            want["Cmd"] = json.loads(arg)
        elif kw == "ENV":
            want["Env"].update(pairs(arg))
        elif kw == "LABEL":
            want["Labels"].update(pairs(arg))
    return want


def image_config(inspect):
    """The image configuration from podman/docker/skopeo inspect output, normalised."""
    if isinstance(inspect, list):
        inspect = inspect[0]
    cfg = inspect.get("Config") or inspect.get("config") or {}
    get = lambda *ks: next((cfg[k] for k in ks if cfg.get(k) is not None), None)
    env = {}
    for e in get("Env", "env") or []:
        k, _, v = e.partition("=")
        env[k] = v
    return {
        "User": get("User", "user") or "",
        "WorkingDir": get("WorkingDir", "workingDir", "workingdir") or "",
        "ExposedPorts": set((get("ExposedPorts", "exposedPorts") or {}).keys()),
        "Entrypoint": get("Entrypoint", "entrypoint"),
        "Cmd": get("Cmd", "cmd"),
        "Env": env,
        "Labels": get("Labels", "labels") or {},
    }


def compare(want, got):
    errors = []
    for field in ("User", "WorkingDir", "ExposedPorts", "Entrypoint", "Cmd"):
        if want[field] != got[field]:
            errors.append(f"{field}: Dockerfile says {want[field]!r}, image has {got[field]!r}")
    for field in ("Env", "Labels"):
        for k in sorted(set(want[field]) | set(got[field])):
            w, g = want[field].get(k), got[field].get(k)
            if w != g:
                errors.append(f"{field} {k}: Dockerfile says {w!r}, image has {g!r}")
    return errors


def check_rootfs(root, want):
    errors = []
    root = pathlib.Path(root)
    uid, _, gid = want["User"].partition(":")
    if not (uid.isdigit() and gid.isdigit()):
        errors.append(f"USER {want['User']!r} must be numeric UID:GID (runAsNonRoot checks it)")
        return errors
    entry = root / want["Entrypoint"][0].lstrip("/")
    if not (entry.is_file() and os.stat(entry).st_mode & 0o111):
        errors.append(f"{want['Entrypoint'][0]} is not an executable file")
    passwd = (root / "etc/passwd").read_text() if (root / "etc/passwd").is_file() else ""
    if not any(l.split(":")[2:4] == [uid, gid] for l in passwd.splitlines() if l.count(":") >= 6):
        errors.append(f"/etc/passwd has no user {uid} with group {gid}")
    group = (root / "etc/group").read_text() if (root / "etc/group").is_file() else ""
    if not any(l.split(":")[2] == gid for l in group.splitlines() if l.count(":") >= 3):
        errors.append(f"/etc/group has no group {gid}")
    state = root / want["WorkingDir"].lstrip("/")
    if not state.is_dir():
        errors.append(f"state directory {want['WorkingDir']} is missing")
    else:
        st = os.stat(state)
        if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (int(uid), int(gid), 0o700):
            errors.append(f"{want['WorkingDir']} is {st.st_uid}:{st.st_gid} {stat.S_IMODE(st.st_mode):o}, want {uid}:{gid} 700")
    tmp = root / "tmp"
    if not tmp.is_dir() or stat.S_IMODE(os.stat(tmp).st_mode) != 0o1777:
        errors.append("/tmp is missing or not mode 1777")
    ca = root / want["Env"].get("SSL_CERT_FILE", "etc/ssl/certs/ca-certificates.crt").lstrip("/")
    if not ca.is_file() or b"BEGIN CERTIFICATE" not in ca.read_bytes():
        errors.append(f"/{ca.relative_to(root)} is missing or holds no certificate")
    return errors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", nargs="?")
    ap.add_argument("--inspect-json")
    ap.add_argument("--mount", action="store_true", help="also check the image's files")
    ap.add_argument("--rootfs", help="check the files of this unpacked root filesystem")
    ap.add_argument("--dockerfile", default=str(DOCKERFILE))
    a = ap.parse_args()
    if not a.image and not a.inspect_json:
        ap.error("give IMAGE or --inspect-json")
    want = expected_config(pathlib.Path(a.dockerfile))
    if a.inspect_json:
        inspect = json.loads(pathlib.Path(a.inspect_json).read_text())
    else:
        inspect = json.loads(subprocess.check_output(["podman", "image", "inspect", a.image]))
    errors = compare(want, image_config(inspect))
    mounted = False
    rootfs = a.rootfs
    if a.mount and a.image:
        rootfs = subprocess.check_output(["podman", "image", "mount", a.image], text=True).strip()
        mounted = True
    try:
        if rootfs:
            errors += check_rootfs(rootfs, want)
    finally:
        if mounted:
            subprocess.run(["podman", "image", "unmount", a.image], stdout=subprocess.DEVNULL)
    name = a.image or a.inspect_json
    for e in errors:
        print(f"ERROR {name}: {e}")
    if errors:
        sys.exit(1)
    print(f"{name}: configuration matches {a.dockerfile}: user {want['User']}, workdir "
          f"{want['WorkingDir']}, ports {' '.join(sorted(want['ExposedPorts']))}, entrypoint "
          f"{want['Entrypoint']}, cmd {want['Cmd']}, {len(want['Env'])} env, {len(want['Labels'])} labels"
          + ("; files checked" if rootfs else ""))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Checks that the manifests in this directory agree with each other and with the irisd.toml
they ship, beyond what the API schemas can say. Called by validate.sh; prints one line per
problem and exits 1 if there is any.

What it checks, for every Deployment and StatefulSet:
- the ConfigMap and the Secret it mounts are in this directory;
- every ConfigMap holds exactly one key, irisd.toml, and it parses as TOML;
- `run --config PATH` names the file the ConfigMap is mounted at;
- the listeners follow irisd's own rule: an address other than loopback needs a token
  (auth_token_file), client certificates, or allow_unauthenticated; tokens and secrets are
  files, and every *_file under the Secret's mount is a key of that Secret; no *_env secrets;
- the admin listener's port is the container port named "admin", and the probes are
  /healthz (liveness) and /readyz (readiness) on it; the intake's port is exposed (as
  "intake") exactly when it listens beyond loopback;
- the spool is on a writable volume;
- Kafka-fed workloads (label feed: kafka) have [[source.kafka]], the others have none.
"""
import ipaddress
import pathlib
import sys
import tomllib

import yaml

HERE = pathlib.Path(__file__).resolve().parent
problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


docs = []
for f in sorted(HERE.glob("*.yaml")):
    for d in yaml.safe_load_all(f.read_text()):
        if d:
            docs.append((f.name, d))

configmaps = {d["metadata"]["name"]: (f, d) for f, d in docs if d["kind"] == "ConfigMap"}
secrets = {d["metadata"]["name"]: (f, d) for f, d in docs if d["kind"] == "Secret"}
workloads = [(f, d) for f, d in docs if d["kind"] in ("Deployment", "StatefulSet")]

tomls = {}
for name, (f, cm) in configmaps.items():
    keys = sorted((cm.get("data") or {}).keys()) + sorted((cm.get("binaryData") or {}).keys())
    if keys != ["irisd.toml"]:
        problem(f, f"ConfigMap {name} must hold exactly one key, irisd.toml (has {keys})")
        continue
    try:
        tomls[name] = tomllib.loads(cm["data"]["irisd.toml"])
    except tomllib.TOMLDecodeError as e:
        problem(f, f"ConfigMap {name}: irisd.toml: {e}")

if not workloads:
    problem("-", "no Deployment or StatefulSet found")


def is_loopback(listen):
    host = listen.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def port_of(listen):
    return int(listen.rsplit(":", 1)[1])


def walk_files(node, path=""):
    """Yields (dotted key, value) for every *_file and *_env key in the TOML."""
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{path}.{k}" if path else k
            if isinstance(v, str) and (k.endswith("_file") or k.endswith("_env")):
                yield p, k, v
            else:
                yield from walk_files(v, p)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_files(v, f"{path}[{i}]")


for f, w in workloads:
    where = f"{f} {w['kind']}/{w['metadata']['name']}"
    pod = w["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {c["metadata"]["name"] for c in w["spec"].get("volumeClaimTemplates", [])}
    (c,) = [c for c in pod["containers"] if c["name"] == "irisd"]
    mounts = c.get("volumeMounts", [])
    args = c.get("args", [])
    config_path = args[args.index("--config") + 1] if "--config" in args else None

    cm_name = secret_name = secret_mount = None
    for m in mounts:
        v = volumes.get(m["name"])
        if v and "configMap" in v and m["mountPath"] == config_path:
            cm_name = v["configMap"]["name"]
            if m.get("subPath") != "irisd.toml":
                problem(where, f"the ConfigMap must be mounted with subPath irisd.toml at {config_path}")
        if v and "secret" in v:
            secret_name, secret_mount = v["secret"]["secretName"], m["mountPath"]
    if cm_name is None:
        problem(where, f"no ConfigMap is mounted at the --config path {config_path}")
        continue
    if cm_name not in configmaps:
        problem(where, f"mounts ConfigMap {cm_name}, which is not in this directory")
        continue
    if secret_name and secret_name not in secrets:
        problem(where, f"mounts Secret {secret_name}, which is not in this directory")
    if cm_name not in tomls:
        continue
    cfg = tomls[cm_name]
    secret_keys = set()
    if secret_name in secrets:
        sd = secrets[secret_name][1]
        secret_keys = set((sd.get("stringData") or {}).keys()) | set((sd.get("data") or {}).keys())

    for dotted, key, value in walk_files(cfg):
        if key.endswith("_env"):
            problem(where, f"{cm_name}: {dotted} = {value!r}: secrets come from the Secret as files here")
        elif secret_mount and value.startswith(secret_mount.rstrip("/") + "/"):
            name = value[len(secret_mount.rstrip("/")) + 1:]
            if name not in secret_keys:
                problem(where, f"{cm_name}: {dotted} = {value!r} but Secret {secret_name} has no key {name!r}")
        elif key in ("auth_token_file", "client_secret_file", "basic_credentials_file", "key_file",
                     "tls_key_file", "client_key_file"):
            problem(where, f"{cm_name}: {dotted} = {value!r} is not under the Secret's mount {secret_mount}")

    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    for section in ("intake", "admin"):
        s = cfg.get(section, {})
        listen = s.get("listen", "127.0.0.1:9700" if section == "intake" else None)
        if listen is None:
            continue
        guarded = ("auth_token_file" in s or "auth_token_env" in s or "client_ca_file" in s
                   or s.get("allow_unauthenticated", False))
        if not is_loopback(listen) and not guarded:
            problem(where, f"{cm_name}: [{section}] listen = {listen!r} is not loopback and has no auth_token_file (irisd refuses to start)")
        exposed = section in ports
        if is_loopback(listen) and exposed:
            problem(where, f"container port {section!r} is exposed but [{section}] listens on loopback")
        if not is_loopback(listen):
            if not exposed:
                problem(where, f"[{section}] listens on {listen} but no container port is named {section!r}")
            elif ports[section] != port_of(listen):
                problem(where, f"container port {section!r} is {ports[section]} but [{section}] listens on {listen}")

    admin = cfg.get("admin", {}).get("listen")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = (c.get(probe) or {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("admin", ports.get("admin")):
            problem(where, f"{probe} must be GET {path} on the admin port (is {get})")
        if admin is None:
            problem(where, f"{probe}: {cm_name} has no [admin] listener")

    spool = cfg.get("spool", {}).get("path", "")
    writable = [m["mountPath"] for m in mounts if not m.get("readOnly")
                and (m["name"] in claims or "emptyDir" in volumes.get(m["name"], {})
                     or "persistentVolumeClaim" in volumes.get(m["name"], {}))]
    if not any(spool.startswith(p.rstrip("/") + "/") for p in writable):
        problem(where, f"{cm_name}: spool.path {spool!r} is not on a writable volume ({writable})")

    kafka = bool(cfg.get("source", {}).get("kafka"))
    feed = w["spec"]["template"]["metadata"].get("labels", {}).get("feed")
    if (feed == "kafka") != kafka:
        problem(where, f"feed: {feed} but {cm_name} {'has' if kafka else 'has no'} [[source.kafka]]")

for p in problems:
    print(f"ERROR {p}")
if problems:
    sys.exit(1)
print(f"coherence: {len(workloads)} workloads, {len(configmaps)} ConfigMaps, {len(secrets)} Secrets agree")

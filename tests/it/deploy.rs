//! What ships under `deploy/` starts as shipped. Every configuration there (the ConfigMaps'
//! `irisd.toml`, the systemd unit's `irisd.toml`, `irisd.example.toml`) is taken out of its
//! file, given its secrets the way its deployment provides them (files from a Kubernetes Secret
//! or systemd credentials, or environment variables), checked with `irisd check-config`, and
//! started with `irisd run`: it must come up, answer `/readyz`, and stop cleanly. Only what
//! cannot exist here is rewritten: listen ports (to free ones, on the shipped hosts), the
//! absolute paths of secrets and state (to a temporary directory), and Kafka brokers (to a mock
//! cluster).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::mocking::MockCluster;

use crate::common::*;

fn shipped(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The `irisd.toml` key of a ConfigMap: a YAML block scalar (`irisd.toml: |`), dedented.
fn configmap_toml(yaml: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "irisd.toml: |");
    assert!(lines.next().is_some(), "no irisd.toml key");
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.starts_with("    "))
        .collect();
    body.iter()
        .map(|l| l.strip_prefix("    ").unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A shipped configuration made runnable here: rewritten addresses and paths, its secret files
/// written (owner-only, as a Secret or systemd credential would be), its environment.
struct Runnable {
    dir: tempfile::TempDir,
    config: PathBuf,
    env: Vec<(String, String)>,
}

fn runnable(name: &str, toml: &str, kafka: &str, secret_dir_prefixes: &[&str]) -> Runnable {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let mut text = toml.to_string();
    // The shipped hosts stay (a listener on 0.0.0.0 must be authenticated as shipped); the
    // ports become free ones.
    for host in ["0.0.0.0", "127.0.0.1"] {
        for port in ["9700", "9701"] {
            text = text.replace(&format!("\"{host}:{port}\""), &format!("\"{host}:0\""));
        }
    }
    for prefix in secret_dir_prefixes {
        text = text.replace(prefix, &format!("{}/", secrets.display()));
    }
    text = text.replace(
        "/var/lib/irisd/",
        &format!("{}/state/", dir.path().display()),
    );
    // bootstrap_servers = "..." → the mock cluster.
    let text: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("bootstrap_servers") {
                format!("bootstrap_servers = \"{kafka}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    // Every secret file the configuration names gets a value, owner-only.
    let marker = format!("{}/", secrets.display());
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        if let Some(rest) = line.split(&marker).nth(1) {
            let file = rest.trim_end_matches('"');
            let path = secrets.join(file);
            std::fs::write(&path, format!("{name}-{file}-{}\n", fastrand::u64(..))).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    let config = dir.path().join("irisd.toml");
    std::fs::write(&config, &text).unwrap();
    Runnable {
        dir,
        config,
        env: Vec::new(),
    }
}

/// `irisd check-config`, then `irisd run`: up, ready, and stopped by SIGTERM with exit 0.
async fn check_and_start(name: &str, r: &Runnable) {
    let out = Command::new(env!("CARGO_BIN_EXE_irisd"))
        .arg("check-config")
        .arg(&r.config)
        .envs(r.env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: check-config refused it:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_irisd"))
        .args(["run", "--grace-secs", "5", "--config"])
        .arg(&r.config)
        .current_dir(r.dir.path())
        .envs(r.env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let admin: std::net::SocketAddr = loop {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
            panic!("{name}: irisd did not start:\n{}", seen.join("\n"));
        };
        if line.contains("irisd is running") {
            let admin = line
                .split("admin=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or_else(|| panic!("{name}: no admin listener: {line}"));
            let admin: std::net::SocketAddr = admin.parse().unwrap();
            break ([127, 0, 0, 1], admin.port()).into();
        }
        seen.push(line);
    };
    std::thread::spawn(move || while rx.recv().is_ok() {});
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let ready = client
        .get(format!("http://{admin}/readyz").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "{name}: /readyz");
    proc.sigterm();
    let mut proc = proc;
    let status = tokio::task::spawn_blocking(move || proc.0.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{name}: stopped with {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_configuration_starts_as_shipped() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("aam-qualifications", 2, 1).unwrap();
    let kafka = cluster.bootstrap_servers();

    // Kubernetes: the ConfigMaps, with the Secret's keys as files under /etc/irisd/secrets.
    let secret_yaml = shipped("deploy/k8s/secret.yaml");
    for file in [
        "deploy/k8s/configmap-intake.yaml",
        "deploy/k8s/configmap-kafka.yaml",
    ] {
        let toml = configmap_toml(&shipped(file));
        // Each secret file the config reads is a key of the shipped Secret.
        for line in toml
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && l.contains("/etc/irisd/secrets/"))
        {
            let key = line.rsplit('/').next().unwrap().trim_end_matches('"');
            assert!(
                secret_yaml.contains(&format!("{key}:")),
                "{file} reads the secret {key}, which secret.yaml does not have"
            );
        }
        let r = runnable(file, &toml, &kafka, &["/etc/irisd/secrets/"]);
        check_and_start(file, &r).await;
    }

    // systemd: the unit's ExecStart names the config; its secrets are LoadCredential= files.
    let unit = shipped("deploy/systemd/irisd.service");
    let exec = unit
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart");
    assert!(
        exec.contains("--config /etc/irisd/irisd.toml"),
        "the unit starts {exec}; deploy/systemd/irisd.toml is shipped for /etc/irisd/irisd.toml"
    );
    let toml = shipped("deploy/systemd/irisd.toml");
    for line in toml.lines().filter(|l| {
        !l.trim_start().starts_with('#') && l.contains("/run/credentials/irisd.service/")
    }) {
        let name = line.rsplit('/').next().unwrap().trim_end_matches('"');
        assert!(
            unit.contains(&format!("LoadCredential={name}:")),
            "irisd.toml reads the credential {name}, which the unit does not load"
        );
    }
    let r = runnable(
        "deploy/systemd/irisd.toml",
        &toml,
        &kafka,
        &["/run/credentials/irisd.service/"],
    );
    check_and_start("deploy/systemd/irisd.toml", &r).await;

    // The documented example, beside which its relative paths resolve; its secret comes from
    // the environment.
    let example = "deploy/irisd.example.toml";
    let mut r = runnable(example, &shipped(example), &kafka, &[]);
    r.env
        .push(("PARTNER_A_SECRET".into(), "example-secret-value".into()));
    check_and_start(example, &r).await;

    // And without its secrets, a shipped configuration says which one is missing.
    let toml = configmap_toml(&shipped("deploy/k8s/configmap-intake.yaml"));
    let r = runnable("missing", &toml, &kafka, &["/etc/irisd/secrets/"]);
    std::fs::remove_file(r.dir.path().join("secrets/intake-token")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_irisd"))
        .arg("check-config")
        .arg(&r.config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("intake.auth_token_file") && stderr.contains("intake-token"),
        "{stderr}"
    );
}

//! Kafka source against librdkafka's mock cluster (the Kafka protocol on loopback, consumer
//! groups included) and the real mock partner: every record delivered, poison records
//! dead-lettered without blocking their partition, offsets committed up to the end and only
//! after delivery, and two `irisd run` processes sharing a group, one of them killed -9.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use irisd::config::Config;
use irisd::daemon::Daemon;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "qualifications";
const GROUP: &str = "irisd-test";

/// One `[[destination]]` of the mock in `env`; `publish_extra` goes at the end of
/// `[destination.publish]` (and may open further sections).
fn destination(name: &str, id: &str, env: &Env, publish_extra: &str) -> String {
    format!(
        r#"
[[destination]]
name = "{name}"
destination_id = "{id}"
user_dpid = "12345"
aam_client_id = "74323"

[destination.auth]
token_url = "{}"
client_id = "{CLIENT_ID}"
client_secret_file = "secret"

[destination.publish]
url = "{}"
max_users = 10
linger_ms = 20
{publish_extra}

[destination.tls]
ca_file = "{}"
"#,
        env.mock.token_url(),
        env.mock.publish_url(),
        env.mock.ca_file.display()
    )
}

fn config_text(env: &Env, bootstrap: &str, spool: &str) -> String {
    let secret = env.dir.path().join("secret");
    std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
    format!(
        r#"[intake]
listen = "127.0.0.1:0"

[spool]
path = "{spool}"
{}{}
[[source.kafka]]
bootstrap_servers = "{bootstrap}"
topics = ["{TOPIC}"]
group_id = "{GROUP}"
commit_interval_ms = 100

[source.kafka.librdkafka]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
"#,
        destination("partner-a", "423", env, "max_in_flight = 8"),
        destination("partner-b", "424", env, "max_in_flight = 8"),
    )
}

/// Produces `n` events (user i → partition i % partitions, destinations alternating), plus
/// the extra raw records given as (partition, payload) after half of them.
fn produce(bootstrap: &str, n: u64, partitions: i32, extra: &[(i32, &str)]) -> Vec<i64> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let mut counts = vec![0i64; partitions as usize];
    let mut send = |p: i32, payload: &str| {
        loop {
            match producer.send(
                BaseRecord::<(), str>::to(TOPIC)
                    .partition(p)
                    .payload(payload),
            ) {
                Ok(()) => break,
                Err((e, _)) => {
                    assert!(e.to_string().contains("Queue full"), "{e}");
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        counts[p as usize] += 1;
    };
    for i in 0..n {
        if i == n / 2 {
            for (p, payload) in extra {
                send(*p, payload);
            }
        }
        let dest = if i % 2 == 0 { "partner-a" } else { "partner-b" };
        send(
            (i % partitions as u64) as i32,
            &event(dest, 1_000_000 + i, &[("5", "1")]),
        );
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    counts
}

/// The group's committed offset of each partition.
fn committed(bootstrap: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(TOPIC, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
    (0..partitions)
        .map(|p| match got.find_partition(TOPIC, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_delivers_everything_dead_letters_poison_and_commits_to_the_end() {
    let env = mock(|_| {}).await;
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 4, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let ends = produce(
        &bootstrap,
        2000,
        4,
        &[
            (1, "this is not json"),
            (2, &event("no-such-partner", 7, &[("5", "1")])),
        ],
    );
    let path = env.dir.path().join("irisd.toml");
    std::fs::write(&path, config_text(&env, &bootstrap, "spool.sqlite")).unwrap();
    let config = Config::load(&path).unwrap();
    let daemon = Daemon::start(&config).await.unwrap();

    let state = env.mock.state.clone();
    assert!(
        wait_until(Duration::from_secs(60), || state.user_counts().len()
            == 2000)
        .await,
        "delivered {} of 2000",
        state.user_counts().len()
    );
    // Offsets: committed up to the end of every partition, poison included.
    let b = bootstrap.clone();
    let mut last = Vec::new();
    for _ in 0..100 {
        let b = b.clone();
        last = tokio::task::spawn_blocking(move || committed(&b, 4))
            .await
            .unwrap();
        if last == ends {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, ends, "committed offsets equal the end offsets");
    let stats = state.stats();
    assert_eq!(stats.unique_users, 2000);
    // Both destinations got their half.
    let m: Vec<u64> = daemon
        .destinations
        .iter()
        .map(|d| d.metrics.snapshot().delivered_users)
        .collect();
    assert_eq!(m, vec![1000, 1000]);

    let dead = irisd::spool::DeadLetterStore::open(&env.dir.path().join("spool.sqlite"))
        .unwrap()
        .list(None, 10)
        .unwrap();
    let mut reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].starts_with("poison record qualifications/1@250: not an event"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].starts_with(
            "poison record qualifications/2@250: unknown destination \"no-such-partner\""
        ),
        "{reasons:?}"
    );
    let text = daemon.admin.metrics_text();
    assert!(
        text.contains("irisd_kafka_poison_records_total 2"),
        "{text}"
    );
    assert!(text.contains("irisd_kafka_records_total 2002"), "{text}");
    // Every metric the Grafana dashboard queries exists.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/irisd-dashboard.json"
    ))
    .unwrap();
    let mut queried: Vec<&str> = dashboard
        .match_indices("irisd_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..end];
            name.strip_suffix("_total")
                .or_else(|| name.strip_suffix("_bucket"))
                .unwrap_or(name)
        })
        .filter(|n| *n != "irisd_")
        .collect();
    queried.sort();
    queried.dedup();
    assert!(queried.len() >= 15, "{queried:?}");
    for name in queried {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "the dashboard queries {name}, which irisd does not export"
        );
    }
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// Starts `irisd run`, its log in `log`; returns once it runs.
fn start(config: &Path, log: &Path) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_irisd"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("irisd is running")
    {
        assert!(std::time::Instant::now() < deadline, "irisd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    proc
}

fn assigned(log: &Path) -> Vec<u32> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("kafka partitions assigned"))
        .filter_map(|l| {
            l.split("partitions=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_partitions_and_one_killed_9_loses_nothing() {
    let env = mock(|c| {
        c.faults.latency_ms = 3;
    })
    .await;
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 6, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let n = 6000u64;
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || produce(&b, n, 6, &[]))
        .await
        .unwrap();
    let dir = env.dir.path();
    for (name, spool) in [("a.toml", "a.sqlite"), ("b.toml", "b.sqlite")] {
        std::fs::write(dir.join(name), config_text(&env, &bootstrap, spool)).unwrap();
    }
    let (log_a, log_b) = (dir.join("a.log"), dir.join("b.log"));
    let a = start(&dir.join("a.toml"), &log_a);
    let b = start(&dir.join("b.toml"), &log_b);
    // Both join the group and get a share.
    let state = env.mock.state.clone();
    let shared = wait_until(Duration::from_secs(30), || {
        let (x, y) = (assigned(&log_a), assigned(&log_b));
        x.last().is_some_and(|&p| p > 0 && p < 6) && y.last().is_some_and(|&p| p > 0 && p < 6)
    })
    .await;
    assert!(
        shared,
        "partitions not split: a {:?}, b {:?}",
        assigned(&log_a),
        assigned(&log_b)
    );
    // Kill A mid-stream.
    assert!(
        wait_until(Duration::from_secs(30), || state.user_counts().len()
            >= 1000)
        .await
    );
    let before = state.user_counts().len();
    drop(a); // SIGKILL
    assert!(
        before < n as usize,
        "everything was delivered before the kill; the test proves nothing"
    );
    // B takes over A's partitions (after the session timeout) and delivers the rest.
    let all = wait_until(Duration::from_secs(90), || {
        state.user_counts().len() == n as usize
    })
    .await;
    let seen = state.user_counts();
    assert!(all, "{} of {n} users delivered after the kill", seen.len());
    let duplicates: u64 = seen.values().map(|&c| u64::from(c) - 1).sum();
    eprintln!(
        "kill -9 of one of two instances at {before} of {n} users delivered: all {n} delivered, {duplicates} duplicates; b's assignments {:?}",
        assigned(&log_b)
    );
    assert_eq!(
        assigned(&log_b).last(),
        Some(&6),
        "b owns all partitions after the kill"
    );
    drop(b);
}

/// Small windows and fast retries, so the broken destination's lane fills quickly.
const OUTAGE_PUBLISH: &str =
    "max_in_flight = 4\n\n[destination.retry]\ninitial_ms = 50\nmax_delay_ms = 200";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_outage_pauses_only_the_topic_feeding_it() {
    // partner-a's endpoint is down (503); partner-b's, another mock, is fine. Each destination
    // has its own topic (`destination = ...` on the source), so only topic-a stops.
    let env_a = mock(|c| {
        c.faults.error_rate = 1.0;
        c.faults.error_status = 503;
    })
    .await;
    let env_b = mock(|_| {}).await;
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("topic-a", 2, 1).unwrap();
    cluster.create_topic("topic-b", 2, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let n = 1000u64;
    {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        for i in 0..n {
            for (topic, dest) in [("topic-a", "partner-a"), ("topic-b", "partner-b")] {
                let payload = event(dest, 5_000_000 + i, &[("5", "1")]);
                while let Err((e, _)) = producer.send(
                    BaseRecord::<(), str>::to(topic)
                        .partition((i % 2) as i32)
                        .payload(&payload),
                ) {
                    assert!(e.to_string().contains("Queue full"), "{e}");
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }
    std::fs::write(
        env_a.dir.path().join("secret"),
        format!("{CLIENT_SECRET}\n"),
    )
    .unwrap();
    let source = |topic: &str, d: &str| {
        format!(
            r#"
[[source.kafka]]
bootstrap_servers = "{bootstrap}"
topics = ["{topic}"]
group_id = "group-{topic}"
destination = "{d}"
commit_interval_ms = 100
"#
        )
    };
    let text = format!(
        "[intake]\nlisten = \"127.0.0.1:0\"\n\n[spool]\npath = \"spool.sqlite\"\n{}{}{}{}",
        destination("partner-a", "423", &env_a, OUTAGE_PUBLISH),
        destination("partner-b", "423", &env_b, OUTAGE_PUBLISH),
        source("topic-a", "partner-a"),
        source("topic-b", "partner-b"),
    );
    let path = env_a.dir.path().join("irisd.toml");
    std::fs::write(&path, text).unwrap();
    let daemon = Daemon::start(&Config::load(&path).unwrap()).await.unwrap();

    // partner-b gets everything while partner-a is down.
    let b = env_b.mock.state.clone();
    assert!(
        wait_until(Duration::from_secs(60), || b.user_counts().len()
            == n as usize)
        .await
    );
    // partner-a's lane is full: topic-a's partitions were paused, nothing of it delivered,
    // and nothing of it committed.
    let text = daemon.admin.metrics_text();
    let pauses: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("irisd_kafka_pauses_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(pauses > 0, "{text}");
    assert_eq!(env_a.mock.state.user_counts().len(), 0);
    let committed_of = |topic: &'static str, group: &'static str| {
        let bootstrap = bootstrap.clone();
        move || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", group)
                .create()
                .unwrap();
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(topic, 0);
            tpl.add_partition(topic, 1);
            let got = c.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
            (0..2)
                .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => -1,
                })
                .collect::<Vec<i64>>()
        }
    };
    let half = n as i64 / 2;
    let mut got = Vec::new();
    for _ in 0..50 {
        got = tokio::task::spawn_blocking(committed_of("topic-b", "group-topic-b"))
            .await
            .unwrap();
        if got == [half, half] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, [half, half], "topic-b committed to the end");
    let a_committed = tokio::task::spawn_blocking(committed_of("topic-a", "group-topic-a"))
        .await
        .unwrap();
    assert!(
        a_committed.iter().all(|&o| o <= 0),
        "nothing of topic-a was delivered, so nothing may be committed: {a_committed:?}"
    );

    // partner-a comes back: the paused partitions resume and everything arrives.
    env_a.mock.state.set_faults(Default::default()).unwrap();
    let a = env_a.mock.state.clone();
    assert!(
        wait_until(Duration::from_secs(60), || a.user_counts().len()
            == n as usize)
        .await,
        "partner-a got {} of {n} after recovering",
        a.user_counts().len()
    );
    let mut got = Vec::new();
    for _ in 0..50 {
        got = tokio::task::spawn_blocking(committed_of("topic-a", "group-topic-a"))
            .await
            .unwrap();
        if got == [half, half] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        got,
        [half, half],
        "topic-a committed to the end after the outage"
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_setting_librdkafka_refuses_fails_the_start_naming_the_source() {
    let env = mock(|_| {}).await;
    let path = env.dir.path().join("irisd.toml");
    let text = config_text(&env, "127.0.0.1:1", "spool.sqlite").replace(
        "\"heartbeat.interval.ms\" = \"500\"",
        "\"heartbeat.interval.ms\" = \"often\"",
    );
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let e = match Daemon::start(&config).await {
        Ok(_) => panic!("started with an invalid librdkafka setting"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("source.kafka[0] (group irisd-test)") && e.contains("heartbeat.interval.ms"),
        "{e}"
    );
}

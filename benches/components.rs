//! Component benchmarks of the publish path's shared parts:
//! - the token cache hit under contention (one destination hammered by every thread, and
//!   many destinations), which must not serialise on a lock: throughput grows with threads;
//! - the spool's own API (not the raw stores of `spool_stores`): a durable append of one
//!   intake request's events, a lane's read of a window, and the acknowledgement.
//!
//! The token comes from a real mock partner on loopback (one fetch, then only cache hits).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::HeaderValue;
use irisd::metrics::DestinationMetrics;
use irisd::mock::{ClientSpec, MockConfig, MockPartner};
use irisd::oauth::cache::TokenCache;
use irisd::oauth::client::TokenClient;
use irisd::oauth::Credentials;
use irisd::spool::{Limits, Spool};
use irisd::transport::{ClientOptions, HttpClient};
use secrecy::SecretString;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `n` token caches of one mock partner, each holding a token.
fn caches(rt: &tokio::runtime::Runtime, dir: &std::path::Path, n: usize) -> Vec<Arc<TokenCache>> {
    rt.block_on(async {
        let mock = MockPartner::start(MockConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_dir: dir.join("tls"),
            clients: vec![ClientSpec {
                client_id: Some("bench".into()),
                client_secret: Some("bench-secret".into()),
                basic: None,
                scopes: vec![],
                active: true,
            }],
            ..MockConfig::default()
        })
        .await
        .unwrap();
        let http = HttpClient::new(&ClientOptions {
            ca_file: Some(&mock.ca_file),
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(5),
            http2: false,
        })
        .unwrap();
        let mut out = Vec::new();
        for i in 0..n {
            let client = TokenClient::new(
                http.clone(),
                mock.token_url().parse().unwrap(),
                Credentials::ClientSecret {
                    client_id: "bench".into(),
                    secret: SecretString::from("bench-secret".to_string()),
                },
                None,
                HeaderValue::from_static("Adobe Audience Manager Iris"),
                Duration::from_secs(5),
            );
            let cache = Arc::new(TokenCache::new(
                format!("d{i}"),
                client,
                None,
                Arc::new(DestinationMetrics::default()),
            ));
            cache.get().await.unwrap();
            out.push(cache);
        }
        // The mock may go: every get() below is a cache hit (an hour-long token).
        mock.shutdown().await;
        out
    })
}

/// `threads` threads share `iters` cache hits, spread over `caches`; returns the wall time.
fn hammer(caches: &[Arc<TokenCache>], threads: usize, iters: u64) -> Duration {
    let per = iters / threads as u64 + 1;
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    for i in 0..per {
                        let c = &caches[(i as usize + t) % caches.len()];
                        std::hint::black_box(c.get().await.unwrap());
                    }
                });
            });
        }
    });
    start.elapsed()
}

fn token_cache(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let many = caches(&rt, dir.path(), 64);
    let one = &many[..1];
    let mut g = c.benchmark_group("token_cache_hit");
    g.throughput(Throughput::Elements(1));
    for threads in [1usize, 2, 4] {
        g.bench_with_input(
            BenchmarkId::new("one_destination", threads),
            &threads,
            |b, &t| b.iter_custom(|iters| hammer(one, t, iters)),
        );
        g.bench_with_input(
            BenchmarkId::new("64_destinations", threads),
            &threads,
            |b, &t| b.iter_custom(|iters| hammer(&many, t, iters)),
        );
    }
    g.finish();
}

const EVENTS: usize = 500;

fn event(i: usize) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(i as u64);
    Bytes::from(format!(
        r#"{{"AAM_UUID":"{}{:012}","DataPartner_UUID":"{:016x}","Segments":[{{"Segment_ID":"{}","Status":"1","DateTime":"Wed Jul 27 16:17:22 UTC 2016"}}]}}"#,
        rng.u64(10_000_000..100_000_000),
        i,
        rng.u64(..),
        rng.u32(10_000..20_000)
    ))
}

fn spool(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("spool");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.sample_size(20);
    let dest: Arc<str> = "bench".into();
    let bodies: Vec<Bytes> = (0..EVENTS).map(event).collect();
    let bytes: u64 = bodies.iter().map(|b| b.len() as u64).sum();
    let block = irisd::spool::EventBlock::from_bodies(&bodies);
    for fsync in [true, false] {
        let spool = Spool::open(
            &dir.path().join(format!("spool-{fsync}.sqlite")),
            Limits {
                fsync,
                max_bytes: u64::MAX / 4,
                max_bytes_per_destination: u64::MAX / 4,
            },
        )
        .unwrap();
        let reader = spool.reader(&dest).unwrap();
        let label = if fsync { "fsync" } else { "no_fsync" };
        // One intake request: reserve, append (durable when fsync), 202.
        g.bench_function(BenchmarkId::new("append_500", label), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let r = spool.reserve(&dest, bytes).unwrap();
                    spool
                        .append(vec![(dest.clone(), block.clone())], 0, vec![r])
                        .await
                        .unwrap()
                })
            })
        });
        // A lane reads a window and acknowledges it (ack + a sync so the work is counted).
        let mut cursor = 0;
        g.bench_function(BenchmarkId::new("read_and_ack_500", label), |b| {
            b.iter(|| {
                let mut got = reader.read_after(cursor, EVENTS).unwrap();
                if got.len() < EVENTS {
                    // Refill (not counted separately; rare).
                    rt.block_on(async {
                        let r = spool.reserve(&dest, bytes).unwrap();
                        spool
                            .append(vec![(dest.clone(), block.clone())], 0, vec![r])
                            .await
                            .unwrap();
                    });
                    got = reader.read_after(cursor, EVENTS).unwrap();
                }
                cursor = got.last().unwrap().id;
                let ids: Vec<u64> = got.iter().map(|u| u.id).collect();
                let n: u64 = got.iter().map(|u| u.json.len() as u64).sum();
                spool.ack(dest.clone(), ids, n);
                rt.block_on(spool.sync());
            })
        });
    }
    g.finish();
}

criterion_group!(benches, token_cache, spool);
criterion_main!(benches);

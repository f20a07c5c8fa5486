//! Publish-path micro-benchmarks: rendering users at intake, and building a publish request
//! (payload JSON + gzip) for the IRIS shape (10 users) and the bulk shape (1000 users).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderValue, Method};
use irisd::delivery::request::RequestBuilder;
use irisd::payload::{render_user, IntakeEvent, PayloadHeader, UserRecord};

/// One user with seeded random ids (repetitive ids would flatter gzip).
fn line(i: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(i);
    format!(
        r#"{{"destination":"partner-a","aam_uuid":"{}{:019}","data_partner_uuid":"{:016x}","segments":[{{"segment_id":"{}","status":"1","time":"2016-07-27T16:17:22Z"}},{{"segment_id":"{}","status":"0","time":"2016-07-27T{:02}:{:02}:22Z"}}]}}"#,
        rng.u64(1_000_000_000_000_000_000..10_000_000_000_000_000_000),
        rng.u64(0..10_000_000_000_000_000_000),
        rng.u64(..),
        rng.u32(10_000..99_999),
        rng.u32(10_000..99_999),
        rng.u32(0..24),
        rng.u32(0..60)
    )
}

fn users(n: u64) -> Vec<UserRecord> {
    (0..n)
        .map(|i| {
            let l = line(i);
            let ev: IntakeEvent<'_> = serde_json::from_str(&l).unwrap();
            render_user(&ev, jiff::Timestamp::UNIX_EPOCH).unwrap()
        })
        .collect()
}

fn builder(level: Option<u32>) -> RequestBuilder {
    RequestBuilder::new(
        "https://partner.example/segments/aam".parse().unwrap(),
        Method::POST,
        HeaderValue::from_static("Adobe Audience Manager Iris"),
        level.map(flate2::Compression::new),
        PayloadHeader {
            user_dpid: "12345".into(),
            client_id: "74323".into(),
            destination_id: "423".into(),
        },
    )
}

fn intake_render(c: &mut Criterion) {
    let lines: Vec<String> = (0..1000).map(line).collect();
    let mut g = c.benchmark_group("intake");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("parse_and_render_1000_lines", |b| {
        b.iter(|| {
            for l in &lines {
                let ev: IntakeEvent<'_> = serde_json::from_str(l).unwrap();
                std::hint::black_box(render_user(&ev, jiff::Timestamp::UNIX_EPOCH).unwrap());
            }
        })
    });
    g.finish();
}

fn build_request(c: &mut Criterion) {
    let mut g = c.benchmark_group("build_request");
    for &n in &[10u64, 1000] {
        let batch = users(n);
        g.throughput(Throughput::Elements(n));
        for level in [None, Some(1), Some(6)] {
            let b = builder(level);
            let label = match level {
                None => "identity".to_string(),
                Some(l) => format!("gzip{l}"),
            };
            g.bench_with_input(BenchmarkId::new(label, n), &batch, |bench, batch| {
                bench.iter(|| b.build(batch, jiff::Timestamp::UNIX_EPOCH, String::new()))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, intake_render, build_request);
criterion_main!(benches);

//! The intake API and what the partner receives: payload correctness as the mock sees it,
//! all-or-nothing requests, line-and-field errors, 404/413/503 with backpressure.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use crate::common::*;
use irisd::daemon::Daemon;

#[tokio::test]
async fn payloads_arrive_in_the_iris_shape_batched_by_max_users() {
    let env = mock(|_| {}).await;
    let config = env.config("method = \"PUT\"\nmax_users = 10\nlinger_ms = 20", "");
    let daemon = Daemon::start(&config).await.unwrap();
    let body: String = (0..25u64)
        .map(|i| {
            event(
                "partner-a",
                100 + i,
                &[("14356", "1"), ("777", if i % 2 == 0 { "0" } else { "1" })],
            ) + "\n"
        })
        .collect();
    let (status, _, text) = post_events(daemon.intake_addr, body).await;
    assert_eq!((status, text.as_str()), (202, r#"{"accepted":25}"#));
    let m = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(10), || m.snapshot().delivered_users
            == 25)
        .await
    );

    let received = env.mock.state.received();
    let mut sizes: Vec<usize> = received.iter().map(|r| r.payload.users.len()).collect();
    sizes.sort();
    assert_eq!(sizes, [5, 10, 10]);
    let mut users = HashMap::new();
    for r in &received {
        assert_eq!(r.method, "PUT");
        assert_eq!(r.request_id.as_ref().map(|s| s.len()), Some(32));
        let p = &r.payload;
        assert_eq!(
            (
                p.user_dpid.as_str(),
                p.client_id.as_str(),
                p.destination_id.as_str()
            ),
            ("12345", "74323", "423")
        );
        assert_eq!(p.user_count, p.users.len().to_string());
        irisd::payload::parse_iris_date(&p.process_time).unwrap();
        for u in &p.users {
            users.insert(u.aam_uuid.clone(), u.clone());
        }
    }
    assert_eq!(users.len(), 25);
    let u = &users["103"];
    assert_eq!(u.data_partner_uuid, "dp-103");
    assert_eq!(u.segments.len(), 2);
    assert_eq!(u.segments[0].segment_id, "14356");
    assert_eq!(u.segments[0].status, "1");
    assert_eq!(u.segments[0].date_time, "Wed Jul 27 16:17:22 UTC 2016");
    assert_eq!(u.segments[1].status, "1");
    assert_eq!(users["104"].segments[1].status, "0");
    let s = env.mock.state.stats();
    assert_eq!(
        (s.users_accepted, s.segments_accepted, s.publish_accepted),
        (25, 50, 3)
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_bad_line_is_named_and_nothing_of_the_request_is_accepted() {
    let env = mock(|_| {}).await;
    let daemon = Daemon::start(&env.config("linger_ms = 10", ""))
        .await
        .unwrap();
    let good = event("partner-a", 1, &[("1", "1")]);
    let bad_status = event("partner-a", 2, &[("1", "1"), ("2", "7")]);
    let (status, _, text) =
        post_events(daemon.intake_addr, format!("{good}\n{bad_status}\n")).await;
    assert_eq!(status, 400);
    assert!(
        text.contains("line 2") && text.contains("segments[1].status"),
        "{text}"
    );

    let (status, _, text) = post_events(
        daemon.intake_addr,
        format!("{good}\n\n{{\"destination\":\"partner-a\"}}\n"),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        text.contains("line 3") && text.contains("missing field"),
        "{text}"
    );

    let (status, _, text) = post_events(daemon.intake_addr, format!("{good}\nnot json\n")).await;
    assert_eq!(status, 400);
    assert!(text.contains("line 2"), "{text}");

    // Bytes that are not UTF-8: the line and column are named.
    let mut body = format!("{good}\n{{\"destination\":\"partner-a\",\"aam_uuid\":\"").into_bytes();
    body.extend_from_slice(b"\xff\"}\n");
    let (status, _, text) = post_events(daemon.intake_addr, body).await;
    assert_eq!(status, 400);
    assert!(text.contains("line 2: not UTF-8 at column 40"), "{text}");

    // Nothing of the rejected requests was queued: only this one arrives.
    let (status, _, _) =
        post_events(daemon.intake_addr, event("partner-a", 3, &[("1", "1")])).await;
    assert_eq!(status, 202);
    let m = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(10), || m.snapshot().delivered_users
            == 1)
        .await
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(m.snapshot().accepted_users, 1);
    let uuids: Vec<String> = env
        .mock
        .state
        .received()
        .iter()
        .flat_map(|r| r.payload.users.iter().map(|u| u.aam_uuid.clone()))
        .collect();
    assert_eq!(uuids, ["3"]);
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn unknown_destination_is_404_naming_it() {
    let env = mock(|_| {}).await;
    let daemon = Daemon::start(&env.config("", "")).await.unwrap();
    let (status, _, text) =
        post_events(daemon.intake_addr, event("partner-z", 1, &[("1", "1")])).await;
    assert_eq!(status, 404);
    assert!(
        text.contains("partner-z") && text.contains("partner-a"),
        "{text}"
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let env = mock(|_| {}).await;
    let mut config = env.config("", "");
    config.intake.max_body_bytes = 1000;
    let daemon = Daemon::start(&config).await.unwrap();
    let body: String = (0..20)
        .map(|i| event("partner-a", i, &[("1", "1")]) + "\n")
        .collect();
    assert!(body.len() > 1000);
    let (status, _, text) = post_events(daemon.intake_addr, body).await;
    assert_eq!(status, 413);
    assert!(text.contains("max_body_bytes"), "{text}");
    assert_eq!(daemon.destinations[0].metrics.snapshot().accepted_users, 0);
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn gzip_request_bodies_are_accepted() {
    let env = mock(|_| {}).await;
    let daemon = Daemon::start(&env.config("linger_ms = 10", ""))
        .await
        .unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(event("partner-a", 9, &[("1", "1")]).as_bytes())
        .unwrap();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let req = http::Request::post(format!("http://{}/v1/events", daemon.intake_addr))
        .header("content-encoding", "gzip")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            enc.finish().unwrap(),
        )))
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), 202);
    let m = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(10), || m.snapshot().delivered_users
            == 1)
        .await
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_full_spool_answers_503_with_retry_after_and_stays_bounded() {
    let env = mock(|_| {}).await;
    // A partner that accepts connections and never answers: nothing drains, the spool fills.
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = blackhole.local_addr().unwrap().port();
    let _held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = blackhole.accept().await {
            conns.push(c);
        }
    });
    let limit = 65_536u64;
    let mut config = env.config_with(
        "max_in_flight = 1\ntimeout_ms = 30000",
        "",
        &format!("max_bytes_per_destination = {limit}"),
        "",
    );
    config.destinations[0].publish.url = format!("https://127.0.0.1:{port}/segments/aam")
        .parse()
        .unwrap();
    let daemon = Daemon::start(&config).await.unwrap();
    let mut accepted = 0u64;
    let mut refused = None;
    for round in 0..100u64 {
        let body: String = (0..50)
            .map(|i| event("partner-a", round * 100 + i, &[("1", "1")]) + "\n")
            .collect();
        let (status, retry_after, text) = post_events(daemon.intake_addr, body).await;
        match status {
            202 => accepted += 50,
            503 => {
                refused = Some((retry_after, text));
                break;
            }
            other => panic!("unexpected {other}: {text}"),
        }
    }
    let (retry_after, text) = refused.expect("the spool filled up");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(
        text.contains("spool full") && text.contains("max_bytes_per_destination"),
        "{text}"
    );
    let (used, _) = daemon.spool.bytes("partner-a");
    assert!(used <= limit, "{used} > {limit}");
    assert!(used > limit / 2, "filled before refusing: {used}");
    assert_eq!(
        daemon.destinations[0].metrics.snapshot().accepted_users,
        accepted
    );
    // Refused before parsing: a body that would be a 400 gets the 503, so a full spool spends
    // no CPU on parsing what it cannot take. (40 KB: less than the bound, more than the room
    // left, which is under half of it.)
    let (status, _, text) =
        post_events(daemon.intake_addr, "{not json at all\n".repeat(2400)).await;
    assert_eq!(status, 503, "{text}");
    // More requests never push the spool past its bound.
    for i in 0..5 {
        post_events(
            daemon.intake_addr,
            event("partner-a", 999_000 + i, &[("1", "1")]) + "\n",
        )
        .await;
        assert!(daemon.spool.bytes("partner-a").0 <= limit);
    }
}

#[tokio::test]
async fn a_full_destination_does_not_block_another_and_is_named() {
    let env = mock(|_| {}).await;
    // partner-a never answers: its spool quota fills. partner-b is the healthy mock.
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = blackhole.local_addr().unwrap().port();
    let _held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = blackhole.accept().await {
            conns.push(c);
        }
    });
    let mut config = env.config_with(
        "max_in_flight = 1\ntimeout_ms = 30000\nlinger_ms = 5",
        "",
        "max_bytes_per_destination = 65536",
        "",
    );
    let mut b = config.destinations[0].clone();
    b.name = "partner-b".into();
    config.destinations.push(b);
    config.destinations[0].publish.url = format!("https://127.0.0.1:{port}/segments/aam")
        .parse()
        .unwrap();
    let daemon = Daemon::start(&config).await.unwrap();
    let lines = |dest: &str, from: u64, n: u64| -> String {
        (from..from + n)
            .map(|i| event(dest, i, &[("1", "1")]) + "\n")
            .collect()
    };
    let mut full = false;
    for round in 0..100 {
        let (status, _, _) =
            post_events(daemon.intake_addr, lines("partner-a", round * 100, 50)).await;
        if status == 503 {
            full = true;
            break;
        }
    }
    assert!(full, "partner-a's quota filled");
    // A mixed request is still all or nothing, and says which destination is full.
    let mixed = lines("partner-a", 900_000, 50) + &lines("partner-b", 800_000, 1);
    let (status, retry_after, text) = post_events(daemon.intake_addr, mixed).await;
    assert_eq!((status, retry_after.as_deref()), (503, Some("1")), "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["full_destinations"], serde_json::json!(["partner-a"]));
    assert!(text.contains("/v1/destinations/NAME/events"), "{text}");
    // partner-b's own events go through, on either endpoint.
    let (status, _, text) = post_events(daemon.intake_addr, lines("partner-b", 1, 5)).await;
    assert_eq!(status, 202, "{text}");
    let per_destination = |body: String| {
        let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let url = format!(
            "http://{}/v1/destinations/partner-b/events",
            daemon.intake_addr
        );
        async move {
            use http_body_util::BodyExt;
            let resp = client
                .request(
                    http::Request::post(url)
                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let text = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&text).into_owned())
        }
    };
    // The destination may be left out of the lines there; another destination is refused.
    let without: String = (10..15)
        .map(|i| {
            format!(
                r#"{{"aam_uuid":"{i}","data_partner_uuid":"dp","segments":[{{"segment_id":"1","status":"1","time":"2016-07-27T16:17:22Z"}}]}}"#
            ) + "\n"
        })
        .collect();
    let (status, text) = per_destination(without).await;
    assert_eq!(status, 202, "{text}");
    let (status, text) = per_destination(lines("partner-a", 5, 1)).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("for \\\"partner-b\\\" only"), "{text}");
    let m = daemon.destinations[1].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(10), || m.snapshot().delivered_users
            == 10)
        .await
    );
}

// Producers that hang up mid-request: every event that was spooled counts as accepted (its
// request may have been answered to nobody), so counters never claim more delivered than
// accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_spooled_for_a_producer_that_hung_up_count_as_accepted() {
    let env = mock(|_| {}).await;
    let config = env.config("linger_ms = 5", "");
    let daemon = Daemon::start(&config).await.unwrap();
    let addr = daemon.intake_addr;
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..200u64 {
        let body: String = (0..50)
            .map(|i| event("partner-a", round * 100 + i, &[("1", "1")]) + "\n")
            .collect();
        // Hang up after a moment: before, during or after the spool's fsync.
        let request = tokio::spawn(post_events(addr, body));
        tokio::time::sleep(Duration::from_micros(rng.u64(0..3_000))).await;
        request.abort();
    }
    let m = daemon.destinations[0].metrics.clone();
    let spool = daemon.spool.clone();
    // Drained: nothing left in the spool, nothing in flight.
    assert!(
        wait_until(Duration::from_secs(60), || spool.events("partner-a") == 0
            && m.snapshot().in_flight_users == 0)
        .await
    );
    let s = m.snapshot();
    let seen = env.mock.state.stats().unique_users;
    assert!(s.accepted_users > 0, "some requests got through");
    assert!(
        s.delivered_users <= s.accepted_users,
        "delivered {} > accepted {}",
        s.delivered_users,
        s.accepted_users
    );
    // Everything spooled was delivered, so the partner saw exactly what was accepted.
    assert_eq!(s.accepted_users, seen, "accepted must equal spooled");
    assert_eq!(s.delivered_users, seen);
    daemon.shutdown(Duration::from_secs(5)).await;
}

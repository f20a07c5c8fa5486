//! Signals at awkward moments, against the real binary: SIGTERM the moment `READY=1` arrives,
//! SIGHUP right after start, SIGTERM in a burst of SIGHUP reloads under load. The daemon never
//! dies of a signal, exits 0 within its grace period, tells systemd `STOPPING=1`, answers 503
//! (not a refused connection) while it drains, and loses nothing it acknowledged.

use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::common::*;

/// `irisd run` with its own systemd notify socket.
struct Notified {
    proc: Proc,
    addr: std::net::SocketAddr,
    socket: UnixDatagram,
}

impl Notified {
    fn start(config: &Path, dir: &Path, grace_secs: u64) -> Notified {
        let socket_path = dir.join(format!("notify-{}.sock", fastrand::u64(..)));
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let (proc, addr) = spawn_daemon_with(config, grace_secs, |cmd| {
            cmd.env("NOTIFY_SOCKET", &socket_path);
        });
        Notified { proc, addr, socket }
    }

    /// The next state the daemon told systemd; fails at once if the daemon dies first.
    fn next_state(&mut self) -> String {
        let mut buf = [0u8; 64];
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Some(status) = self.proc.0.try_wait().unwrap() {
                        panic!("the daemon ended ({status:?}) without telling systemd more");
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the daemon neither notified nor ended"
                    );
                }
                Err(e) => panic!("notify socket: {e}"),
            }
        }
    }

    /// Sends a signal at once, from this process (no helper process to spawn first).
    fn signal(&self, s: Signal) {
        self.proc.signal(s);
    }

    /// Waits for the exit; panics if a signal killed it.
    fn exit_code(mut self) -> i32 {
        let status = self.proc.0.wait().unwrap();
        assert_eq!(status.signal(), None, "killed by a signal: {status:?}");
        status.code().unwrap()
    }
}

/// Two threads spinning until dropped: the cores are busy, as on a loaded machine, which
/// widens every race between the daemon's start and a signal.
struct BusyCores(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>);

impl BusyCores {
    fn start() -> BusyCores {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..2)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        BusyCores(stop, threads)
    }
}

impl Drop for BusyCores {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        for t in self.1.drain(..) {
            let _ = t.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_the_moment_ready_arrives_stops_cleanly_every_time() {
    let env = mock(|_| {}).await;
    let config = env.config_file().write();
    let dir = env.dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let _busy = BusyCores::start();
        for round in 0..30 {
            let mut d = Notified::start(&config, &dir, 10);
            assert_eq!(d.next_state(), "READY=1", "round {round}");
            d.signal(Signal::SIGTERM);
            assert_eq!(d.next_state(), "STOPPING=1", "round {round}");
            assert_eq!(d.exit_code(), 0, "round {round}");
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_right_after_start_reloads_and_a_sigterm_behind_it_is_not_lost() {
    let env = mock(|_| {}).await;
    let config = env.config_file().write();
    let dir = env.dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let _busy = BusyCores::start();
        for round in 0..30 {
            let mut d = Notified::start(&config, &dir, 10);
            assert_eq!(d.next_state(), "READY=1", "round {round}");
            // systemd counts death by SIGHUP as a clean exit: Restart=on-failure would leave
            // the daemon down. And the SIGTERM that follows while the reload runs must count.
            d.signal(Signal::SIGHUP);
            d.signal(Signal::SIGTERM);
            assert_eq!(d.next_state(), "STOPPING=1", "round {round}");
            assert_eq!(d.exit_code(), 0, "round {round}");
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_a_burst_of_reloads_under_load_stops_and_loses_nothing() {
    // A partner that takes 30 ms per request: a reload that restarts the destination waits
    // for its requests in flight, so a SIGTERM sent 10 ms after a SIGHUP lands mid-reload.
    let env = mock(|c| c.faults.latency_ms = 30).await;
    let write = |linger: u64| {
        env.config_file()
            .publish(&format!("linger_ms = {linger}\nmax_in_flight = 8"))
            .write()
    };
    let config = write(5);
    let mut d = Notified::start(&config, env.dir.path(), 20);
    let (addr, mut d) = tokio::task::spawn_blocking(move || {
        assert_eq!(d.next_state(), "READY=1");
        (d.addr, d)
    })
    .await
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..3)
        .map(|p| tokio::spawn(produce(addr, p * 1_000_000, 20, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..20 {
        // Each reload changes the destination, so it restarts.
        write(5 + i % 2);
        d.signal(Signal::SIGHUP);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    write(7);
    d.signal(Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(10)).await;
    d.signal(Signal::SIGTERM);
    let code = tokio::task::spawn_blocking(move || {
        assert_eq!(d.next_state(), "STOPPING=1");
        d.exit_code()
    })
    .await
    .unwrap();
    assert_eq!(code, 0);
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for p in producers {
        acked.extend(p.await.unwrap());
    }
    assert!(!acked.is_empty());
    // Whatever the grace period did not deliver goes out after a restart.
    let (proc, _) = spawn_daemon(&config, 10);
    let state = env.mock.state.clone();
    let want: Vec<String> = acked.iter().map(u64::to_string).collect();
    let all = wait_until(Duration::from_secs(60), || {
        let seen = state.user_counts();
        want.iter().all(|u| seen.contains_key(u))
    })
    .await;
    let seen = state.user_counts();
    let missing = want.iter().filter(|u| !seen.contains_key(u)).count();
    assert!(all, "{missing} of {} acknowledged users lost", want.len());
    drop(proc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_intake_answers_503_while_the_daemon_drains() {
    // A slow partner (3 s, well within the publish timeout) keeps the daemon in its grace
    // period for a while.
    let env = mock(|c| c.faults.latency_ms = 3_000).await;
    let config = env
        .config_file()
        .publish("linger_ms = 0\ntimeout_ms = 30000")
        .write();
    let mut d = Notified::start(&config, env.dir.path(), 30);
    let (addr, mut d) = tokio::task::spawn_blocking(move || {
        assert_eq!(d.next_state(), "READY=1");
        (d.addr, d)
    })
    .await
    .unwrap();
    assert_eq!(
        post_events(addr, event("partner-a", 1, &[("1", "1")]))
            .await
            .0,
        202
    );
    let d = tokio::task::spawn_blocking(move || {
        d.signal(Signal::SIGTERM);
        assert_eq!(d.next_state(), "STOPPING=1");
        d
    })
    .await
    .unwrap();
    let (status, retry_after, body) = post_events(addr, event("partner-a", 2, &[("1", "1")])).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(body.contains("shutting down"), "{body}");
    assert_eq!(
        tokio::task::spawn_blocking(move || d.exit_code())
            .await
            .unwrap(),
        0
    );
    assert!(
        env.mock.state.user_counts().contains_key("1"),
        "delivered in the grace period"
    );
}

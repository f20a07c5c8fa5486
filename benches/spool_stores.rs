//! The spool's queue pattern on the two candidate embedded stores, to choose one by
//! measurement: append a batch of events in one durable (fsync'd) transaction, read a
//! destination's oldest events in order, delete acknowledged events.
//!
//! Events are 200-byte records, 200 per append (one intake request's worth, group-committed).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const BATCH: u64 = 200;
const RECORD: usize = 200;

fn record(i: u64) -> Vec<u8> {
    let mut v = format!("{{\"AAM_UUID\":\"{i:038}\"").into_bytes();
    v.resize(RECORD, b'x');
    v
}

struct Sqlite {
    conn: rusqlite::Connection,
    next: u64,
    read_cursor: u64,
}

impl Sqlite {
    fn open(path: &std::path::Path) -> Self {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS events (dest INTEGER NOT NULL, id INTEGER NOT NULL, body BLOB NOT NULL, PRIMARY KEY (dest, id)) WITHOUT ROWID",
        )
        .unwrap();
        Self {
            conn,
            next: 0,
            read_cursor: 0,
        }
    }

    fn append(&mut self) {
        let tx = self.conn.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("INSERT INTO events (dest, id, body) VALUES (1, ?1, ?2)")
                .unwrap();
            for _ in 0..BATCH {
                self.next += 1;
                st.execute(rusqlite::params![self.next as i64, record(self.next)])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }

    fn read_and_ack(&mut self) -> usize {
        let ids: Vec<i64> = {
            let mut st = self
                .conn
                .prepare_cached(
                    "SELECT id, body FROM events WHERE dest = 1 AND id > ?1 ORDER BY id LIMIT ?2",
                )
                .unwrap();
            st.query_map(
                rusqlite::params![self.read_cursor as i64, BATCH as i64],
                |r| {
                    let _body: Vec<u8> = r.get(1)?;
                    r.get(0)
                },
            )
            .unwrap()
            .map(Result::unwrap)
            .collect()
        };
        if let Some(&last) = ids.last() {
            self.read_cursor = last as u64;
        }
        let tx = self.conn.transaction().unwrap();
        {
            let mut del = tx
                .prepare_cached("DELETE FROM events WHERE dest = 1 AND id = ?1")
                .unwrap();
            for id in &ids {
                del.execute([id]).unwrap();
            }
        }
        tx.commit().unwrap();
        ids.len()
    }
}

const EVENTS: redb::TableDefinition<'static, (u32, u64), &[u8]> =
    redb::TableDefinition::new("events");

struct Redb {
    db: redb::Database,
    next: u64,
    read_cursor: u64,
}

impl Redb {
    fn open(path: &std::path::Path) -> Self {
        let db = redb::Database::create(path).unwrap();
        Self {
            db,
            next: 0,
            read_cursor: 0,
        }
    }

    fn append(&mut self) {
        let tx = self.db.begin_write().unwrap();
        {
            let mut t = tx.open_table(EVENTS).unwrap();
            for _ in 0..BATCH {
                self.next += 1;
                t.insert((1u32, self.next), record(self.next).as_slice())
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }

    fn read_and_ack(&mut self) -> usize {
        let ids: Vec<u64> = {
            let rtx = self.db.begin_read().unwrap();
            let t = rtx.open_table(EVENTS).unwrap();
            t.range((1u32, self.read_cursor + 1)..=(1u32, u64::MAX))
                .unwrap()
                .take(BATCH as usize)
                .map(|r| {
                    let (k, v) = r.unwrap();
                    std::hint::black_box(v.value().len());
                    k.value().1
                })
                .collect()
        };
        if let Some(&last) = ids.last() {
            self.read_cursor = last;
        }
        let tx = self.db.begin_write().unwrap();
        {
            let mut t = tx.open_table(EVENTS).unwrap();
            for id in &ids {
                t.remove((1u32, *id)).unwrap();
            }
        }
        tx.commit().unwrap();
        ids.len()
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("spool_store");
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(20);

    let mut s = Sqlite::open(&dir.path().join("spool.sqlite"));
    g.bench_function("sqlite_wal/append_200_fsync", |b| b.iter(|| s.append()));
    g.bench_function("sqlite_wal/read_then_delete_200", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                s.append();
                let t = Instant::now();
                assert_eq!(s.read_and_ack(), BATCH as usize);
                total += t.elapsed();
            }
            total
        })
    });

    let mut r = Redb::open(&dir.path().join("spool.redb"));
    g.bench_function("redb/append_200_fsync", |b| b.iter(|| r.append()));
    g.bench_function("redb/read_then_delete_200", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                r.append();
                let t = Instant::now();
                assert_eq!(r.read_and_ack(), BATCH as usize);
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

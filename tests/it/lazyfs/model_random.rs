//! Randomized check of the pure model against a deliberately naive reference: random
//! creates, writes, truncations, mkdir, unlink, rmdir, renames, open handles (unlinked but
//! open files), fsyncs, directory fsyncs and power cuts. The reference keeps whole copies of
//! live and durable state per node and never frees anything before a cut, so it shares none of
//! the model's dirty-page tracking, link counting or garbage collection. After every cut the
//! model's tree must equal the reference's durable tree; live trees are compared after every
//! operation. Seeded: set LAZYFS_SEED to replay, LAZYFS_CASES / LAZYFS_OPS to scale.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::OsStr;

use super::model::{Ino, Model, RenameMode, SnapNode, ROOT};

/// splitmix64: tiny, seedable, good enough for test case generation.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            Some(&v[self.below(v.len() as u64) as usize])
        }
    }
}

#[derive(Clone)]
enum RNode {
    File {
        live: Vec<u8>,
        durable: Vec<u8>,
    },
    Dir {
        live: BTreeMap<String, u64>,
        durable: BTreeMap<String, u64>,
    },
}

/// The naive reference.
struct Reference {
    nodes: HashMap<u64, RNode>,
    next: u64,
}

const RROOT: u64 = 0;

impl Reference {
    fn new() -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            RROOT,
            RNode::Dir {
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
            },
        );
        Reference { nodes, next: 1 }
    }

    fn entries(&self, dir: u64) -> &BTreeMap<String, u64> {
        match &self.nodes[&dir] {
            RNode::Dir { live, .. } => live,
            RNode::File { .. } => panic!("not a dir"),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> &mut BTreeMap<String, u64> {
        match self.nodes.get_mut(&dir).unwrap() {
            RNode::Dir { live, .. } => live,
            RNode::File { .. } => panic!("not a dir"),
        }
    }

    fn is_dir(&self, id: u64) -> bool {
        matches!(self.nodes[&id], RNode::Dir { .. })
    }

    fn add(&mut self, dir: u64, name: &str, node: RNode) -> u64 {
        let id = self.next;
        self.next += 1;
        self.nodes.insert(id, node);
        self.entries_mut(dir).insert(name.to_string(), id);
        id
    }

    fn file_live(&mut self, id: u64) -> &mut Vec<u8> {
        match self.nodes.get_mut(&id).unwrap() {
            RNode::File { live, .. } => live,
            RNode::Dir { .. } => panic!("not a file"),
        }
    }

    fn fsync(&mut self, id: u64) {
        match self.nodes.get_mut(&id).unwrap() {
            RNode::File { live, durable } => *durable = live.clone(),
            RNode::Dir { live, durable } => *durable = live.clone(),
        }
    }

    /// Live paths: (path, id, parent id, name), breadth first.
    fn walk(&self) -> Vec<(String, u64, u64, String)> {
        let mut out = Vec::new();
        let mut q = VecDeque::from([(RROOT, String::new())]);
        while let Some((dir, path)) = q.pop_front() {
            for (name, &c) in self.entries(dir) {
                let p = format!("{path}/{name}");
                out.push((p.clone(), c, dir, name.clone()));
                if self.is_dir(c) {
                    q.push_back((c, p));
                }
            }
        }
        out
    }

    fn snapshot(&self) -> BTreeMap<String, SnapNode> {
        let mut out = BTreeMap::from([(String::new(), SnapNode::Dir)]);
        for (p, id, _, _) in self.walk() {
            let node = match &self.nodes[&id] {
                RNode::File { live, .. } => SnapNode::File(live.clone()),
                RNode::Dir { .. } => SnapNode::Dir,
            };
            out.insert(p, node);
        }
        out
    }

    /// Everything back to durable; breadth first from the root in name order, a directory
    /// reached a second time loses that entry; unreachable nodes go.
    fn cut(&mut self) {
        for n in self.nodes.values_mut() {
            match n {
                RNode::File { live, durable } => *live = durable.clone(),
                RNode::Dir { live, durable } => *live = durable.clone(),
            }
        }
        let mut seen = HashSet::from([RROOT]);
        let mut q = VecDeque::from([RROOT]);
        while let Some(dir) = q.pop_front() {
            let entries: Vec<(String, u64)> = self
                .entries(dir)
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            for (name, c) in entries {
                if self.is_dir(c) {
                    if seen.insert(c) {
                        q.push_back(c);
                    } else if let Some(RNode::Dir { live, durable }) = self.nodes.get_mut(&dir) {
                        live.remove(&name);
                        durable.remove(&name);
                    }
                } else {
                    seen.insert(c);
                }
            }
        }
        self.nodes.retain(|id, _| seen.contains(id));
    }
}

/// Keeps model inodes and reference ids side by side.
struct Pair {
    model: Model,
    reference: Reference,
    /// reference id -> model inode
    ino: HashMap<u64, Ino>,
    /// Open handles (reference id), possibly on unlinked files.
    open: Vec<u64>,
}

impl Pair {
    fn m(&self, id: u64) -> Ino {
        self.ino[&id]
    }
}

fn name(rng: &mut Rng) -> String {
    // A small name space, so renames hit existing names and creations collide.
    format!("n{}", rng.below(6))
}

fn step(p: &mut Pair, rng: &mut Rng) -> String {
    let paths = p.reference.walk();
    let dirs: Vec<u64> = std::iter::once(RROOT)
        .chain(
            paths
                .iter()
                .filter(|x| p.reference.is_dir(x.1))
                .map(|x| x.1),
        )
        .collect();
    let files: Vec<&(String, u64, u64, String)> =
        paths.iter().filter(|x| !p.reference.is_dir(x.1)).collect();
    let all: Vec<&(String, u64, u64, String)> = paths.iter().collect();
    let roll = rng.below(100);
    match roll {
        0..=11 => {
            let d = *rng.pick(&dirs).unwrap();
            let n = name(rng);
            if p.reference.entries(d).contains_key(&n) {
                let e = p
                    .model
                    .create_file(p.m(d), OsStr::new(&n), 0o644, 0, 0)
                    .unwrap_err();
                assert_eq!(e, libc::EEXIST);
                return format!("create {n} (exists)");
            }
            let ino = p
                .model
                .create_file(p.m(d), OsStr::new(&n), 0o644, 0, 0)
                .unwrap();
            let id = p.reference.add(
                d,
                &n,
                RNode::File {
                    live: vec![],
                    durable: vec![],
                },
            );
            p.ino.insert(id, ino);
            format!("create {n} in {d}")
        }
        12..=17 => {
            let d = *rng.pick(&dirs).unwrap();
            let n = name(rng);
            if p.reference.entries(d).contains_key(&n) {
                return "mkdir (exists)".into();
            }
            let ino = p.model.mkdir(p.m(d), OsStr::new(&n), 0o755, 0, 0).unwrap();
            let id = p.reference.add(
                d,
                &n,
                RNode::Dir {
                    live: BTreeMap::new(),
                    durable: BTreeMap::new(),
                },
            );
            p.ino.insert(id, ino);
            format!("mkdir {n} in {d}")
        }
        18..=37 => {
            // Write through a path or through an open (maybe unlinked) handle.
            let id = if !p.open.is_empty() && rng.below(3) == 0 {
                *rng.pick(&p.open).unwrap()
            } else if let Some(f) = rng.pick(&files) {
                f.1
            } else {
                return "write (no file)".into();
            };
            let off = match rng.below(4) {
                0 => 0,
                1 => p.reference.file_live(id).len() as u64,
                _ => rng.below(12_000),
            };
            let max = if rng.below(5) == 0 { 9000 } else { 300 };
            let len = rng.below(max) as usize;
            let byte = rng.below(256) as u8;
            let data = vec![byte; len];
            p.model.write(p.m(id), off, &data).unwrap();
            let live = p.reference.file_live(id);
            if len > 0 {
                let end = off as usize + len;
                if live.len() < end {
                    live.resize(end, 0);
                }
                live[off as usize..end].copy_from_slice(&data);
            }
            format!("write {id} @{off} +{len}")
        }
        38..=42 => {
            let Some(f) = rng.pick(&files) else {
                return "truncate (no file)".into();
            };
            let len = rng.below(10_000);
            p.model.set_len(p.m(f.1), len).unwrap();
            p.reference.file_live(f.1).resize(len as usize, 0);
            format!("truncate {} {len}", f.0)
        }
        43..=54 => {
            let id = if !p.open.is_empty() && rng.below(3) == 0 {
                *rng.pick(&p.open).unwrap()
            } else if let Some(f) = rng.pick(&files) {
                f.1
            } else {
                return "fsync (no file)".into();
            };
            p.model.fsync(p.m(id)).unwrap();
            p.reference.fsync(id);
            format!("fsync {id}")
        }
        55..=66 => {
            let d = *rng.pick(&dirs).unwrap();
            p.model.fsyncdir(p.m(d)).unwrap();
            p.reference.fsync(d);
            format!("fsyncdir {d}")
        }
        67..=72 => {
            let Some(f) = rng.pick(&files) else {
                return "unlink (no file)".into();
            };
            p.model.unlink(p.m(f.2), OsStr::new(&f.3)).unwrap();
            p.reference.entries_mut(f.2).remove(&f.3);
            format!("unlink {}", f.0)
        }
        73..=75 => {
            let empty: Vec<&&(String, u64, u64, String)> = all
                .iter()
                .filter(|x| p.reference.is_dir(x.1) && p.reference.entries(x.1).is_empty())
                .collect();
            let Some(d) = rng.pick(&empty) else {
                return "rmdir (none)".into();
            };
            p.model.rmdir(p.m(d.2), OsStr::new(&d.3)).unwrap();
            p.reference.entries_mut(d.2).remove(&d.3);
            format!("rmdir {}", d.0)
        }
        76..=88 => {
            let Some(src) = rng.pick(&all) else {
                return "rename (nothing)".into();
            };
            let dst_dir = *rng.pick(&dirs).unwrap();
            let n = name(rng);
            let src_is_dir = p.reference.is_dir(src.1);
            // Moving a directory under itself is EINVAL in both; check the model says so.
            if src_is_dir {
                let mut under = HashSet::from([src.1]);
                let mut q = VecDeque::from([src.1]);
                while let Some(d) = q.pop_front() {
                    for &c in p.reference.entries(d).values() {
                        if p.reference.is_dir(c) && under.insert(c) {
                            q.push_back(c);
                        }
                    }
                }
                if under.contains(&dst_dir) {
                    let e = p
                        .model
                        .rename(
                            p.m(src.2),
                            OsStr::new(&src.3),
                            p.m(dst_dir),
                            OsStr::new(&n),
                            RenameMode::Replace,
                        )
                        .unwrap_err();
                    assert_eq!(e, libc::EINVAL);
                    return "rename (into itself)".into();
                }
            }
            let existing = p.reference.entries(dst_dir).get(&n).copied();
            if let Some(t) = existing {
                if t == src.1 {
                    return "rename (same)".into();
                }
                let ok = match (src_is_dir, p.reference.is_dir(t)) {
                    (false, false) => true,
                    (true, true) => p.reference.entries(t).is_empty(),
                    _ => false,
                };
                if !ok {
                    assert!(p
                        .model
                        .rename(
                            p.m(src.2),
                            OsStr::new(&src.3),
                            p.m(dst_dir),
                            OsStr::new(&n),
                            RenameMode::Replace
                        )
                        .is_err());
                    return "rename (incompatible)".into();
                }
            }
            p.model
                .rename(
                    p.m(src.2),
                    OsStr::new(&src.3),
                    p.m(dst_dir),
                    OsStr::new(&n),
                    RenameMode::Replace,
                )
                .unwrap();
            p.reference.entries_mut(src.2).remove(&src.3);
            p.reference.entries_mut(dst_dir).insert(n.clone(), src.1);
            format!("rename {} -> {dst_dir}/{n}", src.0)
        }
        89..=92 => {
            let Some(f) = rng.pick(&files) else {
                return "open (no file)".into();
            };
            p.model.open(p.m(f.1)).unwrap();
            p.open.push(f.1);
            format!("open {}", f.0)
        }
        93..=96 => {
            if p.open.is_empty() {
                return "close (none)".into();
            }
            let i = rng.below(p.open.len() as u64) as usize;
            let id = p.open.swap_remove(i);
            p.model.release(p.m(id));
            format!("close {id}")
        }
        _ => {
            // Programs are killed and handles gone before a cut.
            for id in p.open.drain(..) {
                p.model.release(p.ino[&id]);
            }
            let before = p.model.snapshot(true);
            p.model.power_cut();
            p.reference.cut();
            p.ino.retain(|id, _| p.reference.nodes.contains_key(id));
            let after = p.model.snapshot(false);
            assert_eq!(
                before, after,
                "durable snapshot before the cut differs from the tree after it"
            );
            "power cut".into()
        }
    }
}

fn run_case(seed: u64, ops: usize) {
    let mut rng = Rng(seed);
    let mut p = Pair {
        model: Model::new(false),
        reference: Reference::new(),
        ino: HashMap::from([(RROOT, ROOT)]),
        open: Vec::new(),
    };
    let mut history: VecDeque<String> = VecDeque::new();
    for i in 0..ops {
        let op = step(&mut p, &mut rng);
        history.push_back(op);
        if history.len() > 30 {
            history.pop_front();
        }
        let (m, r) = (p.model.snapshot(false), p.reference.snapshot());
        if m != r {
            let keys: Vec<_> = m
                .keys()
                .chain(r.keys())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let diff: Vec<_> = keys
                .into_iter()
                .filter(|k| m.get(*k) != r.get(*k))
                .collect();
            panic!(
                "seed {seed}: trees differ after op {i}; paths {diff:?}; last ops: {history:#?}"
            );
        }
        // Inodes the model keeps must be reachable from somewhere the reference knows of.
        assert!(
            p.model.inode_count() <= p.reference.nodes.len(),
            "seed {seed}: model leaks inodes"
        );
    }
    // Finally cut once more: nothing but the durable state survives.
    for id in p.open.drain(..) {
        p.model.release(p.ino[&id]);
    }
    p.model.power_cut();
    p.reference.cut();
    assert_eq!(
        p.model.snapshot(false),
        p.reference.snapshot(),
        "seed {seed}: final cut"
    );
    assert_eq!(
        p.model.inode_count(),
        p.reference.nodes.len(),
        "seed {seed}: inode count after cut"
    );
}

#[test]
fn model_matches_reference() {
    let base = std::env::var("LAZYFS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let cases: u64 = std::env::var("LAZYFS_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let ops: usize = std::env::var("LAZYFS_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    eprintln!("model_matches_reference: LAZYFS_SEED={base} ({cases} cases x {ops} ops)");
    for c in 0..cases {
        run_case(base.wrapping_add(c), ops);
    }
}

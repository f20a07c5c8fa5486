//! The pure in-memory model behind lazyfs, with no FUSE in it: a tree of inodes in which every
//! file and directory has a *live* state (what programs see) and a *durable* state (what would
//! be left after a power cut), under strict POSIX durability rules:
//!
//! - a file's content, size and metadata become durable only when that file is fsync'd
//!   ([`Model::fsync`], for `fsync` and `fdatasync` alike);
//! - a directory's entries (creations, unlinks, renames, mkdir, rmdir) become durable only
//!   when that directory is fsync'd ([`Model::fsyncdir`]); fsync of a file does not make its
//!   own entry durable, and a rename between two directories is two independent changes;
//! - [`Model::power_cut`] throws away everything pending: every inode goes back to its durable
//!   state and inodes no longer reachable from the root in the durable tree disappear.
//!
//! Errors are plain `errno` values (`libc::ENOENT`, ...) so the FUSE adapter can pass them on.
//! The model is unit-tested here and checked against a simpler reference in
//! `tests/model_random.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::time::{Duration, SystemTime};

/// Inode number. Numbers are never reused within one model, so a stale number from the kernel
/// can only ever hit `ENOENT`, never another file.
pub type Ino = u64;
/// The root directory's inode number (FUSE's `FUSE_ROOT_ID`).
pub const ROOT: Ino = 1;
/// An `errno` value.
pub type Errno = i32;
/// Result of a model operation.
pub type Result<T> = std::result::Result<T, Errno>;

/// Granularity of dirty-range tracking: fsync and the cut copy only pages written since the
/// last fsync, so a commit on a multi-megabyte WAL does not copy the whole file.
const PAGE: u64 = 4096;
/// Largest file we accept. Content is held densely in memory, so a stray huge offset must fail
/// (`EFBIG`) instead of allocating gigabytes.
pub const MAX_FILE_SIZE: u64 = 1 << 32;
/// Bound on the operation log, so a forgotten `record_ops` cannot eat memory.
const MAX_LOG: usize = 100_000;

/// Kind of an inode. Only regular files and directories exist: that is all SQLite and plain
/// `std::fs` programs need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// Metadata that `setattr` can change; durable with the inode's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits (`0o7777` at most), without the file type.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

/// What `getattr` reports about an inode (live state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    pub nlink: u32,
    pub meta: Meta,
    pub crtime: SystemTime,
}

/// How `rename` treats an existing target (`renameat2` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    /// Plain `rename(2)`: replace the target if compatible.
    Replace,
    /// `RENAME_NOREPLACE`: fail with `EEXIST` if the target exists.
    NoReplace,
    /// `RENAME_EXCHANGE`: swap the two entries, both must exist.
    Exchange,
}

/// What one power cut threw away.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Bytes passed to `write` since the last fsync of their file, summed over all files
    /// (rewrites of the same range count again): the volume programs wrote and never synced.
    pub unsynced_write_bytes: u64,
    /// Bytes of file content that the cut changed: bytes that differ between live and durable
    /// content of surviving files, plus the whole live content of files that disappeared.
    pub dropped_bytes: u64,
    /// Surviving files whose content or metadata went back to an older state.
    pub files_reverted: u64,
    /// Surviving directories whose entries or metadata went back to an older state.
    pub dirs_reverted: u64,
    /// Inodes that disappeared because no durable path reaches them.
    pub inodes_removed: u64,
    /// Durable entries dropped because they named a directory already reachable elsewhere (a
    /// directory renamed across directories with both fsync'd, or a cycle). Keeping both would
    /// give a directory two parents, which the kernel cannot represent.
    pub duplicate_dir_entries_dropped: u64,
    /// Time to unmount (only set by `LazyFs::power_cut`).
    pub unmount_time: Duration,
    /// Time to mount again (only set by `LazyFs::power_cut`).
    pub remount_time: Duration,
}

/// Counters, and what a cut right now would drop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `fsync`/`fdatasync` calls on files.
    pub fsyncs: u64,
    /// `fsync` calls on directories, honoured or not.
    pub fsyncdirs: u64,
    /// Directory fsyncs turned into no-ops by `ignore_dir_fsync`.
    pub fsyncdirs_ignored: u64,
    /// Power cuts so far.
    pub cuts: u64,
    /// Inodes in memory (live or durable).
    pub inodes: u64,
    /// As [`CutReport::unsynced_write_bytes`], if the cut happened now.
    pub unsynced_write_bytes: u64,
    /// As [`CutReport::dropped_bytes`], if the cut happened now.
    pub pending_bytes: u64,
    /// Files with unsynced content or metadata.
    pub pending_files: u64,
    /// Directories with unsynced entries or metadata.
    pub pending_dirs: u64,
    /// What the last cut dropped.
    pub last_cut: Option<CutReport>,
}

/// One node of a [`Model::snapshot`]: a directory, or a file with its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapNode {
    Dir,
    File(Vec<u8>),
}

struct FileBody {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Pages (offset / PAGE) whose live bytes may differ from durable bytes. Invariant: every
    /// byte position where live and durable differ, or that exists in only one of them, is in
    /// a dirty page.
    dirty: BTreeSet<u64>,
    meta_dirty: bool,
    unsynced_write_bytes: u64,
}

struct DirBody {
    live: BTreeMap<OsString, Ino>,
    durable: BTreeMap<OsString, Ino>,
    /// Live parent (directories have exactly one; the root is its own parent).
    parent: Ino,
    dirty: bool,
}

enum Body {
    File(FileBody),
    Dir(DirBody),
}

struct Inode {
    meta: Meta,
    durable_meta: Meta,
    crtime: SystemTime,
    body: Body,
    /// Live directory entries naming this inode.
    live_links: u32,
    /// Durable directory entries (of directories still in memory) naming this inode: while
    /// non-zero the inode may come back after a cut, so its durable state must be kept.
    durable_links: u32,
    /// Open handles (FUSE open/opendir minus release).
    open: u32,
    /// Kernel lookup references (FUSE nlookup): the kernel may still name this inode.
    lookups: u64,
    /// Last known parent and name, only for the operation log.
    hint_parent: Ino,
    hint_name: OsString,
}

impl Inode {
    fn kind(&self) -> Kind {
        match self.body {
            Body::File(_) => Kind::File,
            Body::Dir(_) => Kind::Dir,
        }
    }
}

/// The durable tree as a cut would leave it.
struct DurableTree {
    reachable: HashSet<Ino>,
    /// Directory parent of each reachable directory.
    parents: HashMap<Ino, Ino>,
    /// Entries (directory, name) to drop because they name an already reached directory.
    duplicates: Vec<(Ino, OsString)>,
}

/// The whole filesystem state. Not thread-safe by itself; the FUSE adapter wraps it in a mutex.
pub struct Model {
    inodes: HashMap<Ino, Inode>,
    next_ino: Ino,
    ignore_dir_fsync: bool,
    fsyncs: u64,
    fsyncdirs: u64,
    fsyncdirs_ignored: u64,
    cuts: u64,
    last_cut: Option<CutReport>,
    log: Option<Vec<String>>,
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn pages(start: u64, end: u64) -> std::ops::Range<u64> {
    if end <= start {
        return 0..0;
    }
    start / PAGE..(end - 1) / PAGE + 1
}

fn differing_bytes(f: &FileBody) -> u64 {
    let common = f.live.len().min(f.durable.len()) as u64;
    let mut n = (f.live.len() as u64).abs_diff(f.durable.len() as u64);
    for &p in &f.dirty {
        let start = p * PAGE;
        if start >= common {
            break;
        }
        let end = (start + PAGE).min(common);
        let (s, e) = (start as usize, end as usize);
        n += f.live[s..e]
            .iter()
            .zip(&f.durable[s..e])
            .filter(|(a, b)| a != b)
            .count() as u64;
    }
    n
}

impl Default for Model {
    fn default() -> Self {
        Self::new(false)
    }
}

impl Model {
    /// An empty filesystem: just the root directory, which is durable as created (like a
    /// freshly made filesystem).
    pub fn new(ignore_dir_fsync: bool) -> Model {
        let t = now();
        let meta = Meta {
            perm: 0o755,
            uid: 0,
            gid: 0,
            atime: t,
            mtime: t,
            ctime: t,
        };
        let root = Inode {
            meta,
            durable_meta: meta,
            crtime: t,
            body: Body::Dir(DirBody {
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
                parent: ROOT,
                dirty: false,
            }),
            live_links: 1,
            durable_links: 1,
            open: 0,
            lookups: 0,
            hint_parent: ROOT,
            hint_name: OsString::new(),
        };
        let mut inodes = HashMap::new();
        inodes.insert(ROOT, root);
        Model {
            inodes,
            next_ino: ROOT + 1,
            ignore_dir_fsync,
            fsyncs: 0,
            fsyncdirs: 0,
            fsyncdirs_ignored: 0,
            cuts: 0,
            last_cut: None,
            log: None,
        }
    }

    /// Makes directory fsyncs no-ops (or honoured again). Entries already durable stay so.
    pub fn set_ignore_dir_fsync(&mut self, ignore: bool) {
        self.ignore_dir_fsync = ignore;
    }

    /// Starts (or stops) recording durability-relevant operations (create, unlink, rename,
    /// fsync, fsyncdir, truncate, cut), one line each, for reports.
    pub fn record_ops(&mut self, on: bool) {
        if on {
            self.log.get_or_insert_with(Vec::new);
        } else {
            self.log = None;
        }
    }

    /// Takes the recorded operations, leaving recording on if it was.
    pub fn take_log(&mut self) -> Vec<String> {
        match &mut self.log {
            Some(log) => std::mem::take(log),
            None => Vec::new(),
        }
    }

    fn record(&mut self, line: impl FnOnce(&Model) -> String) {
        if self.log.as_ref().is_some_and(|l| l.len() < MAX_LOG) {
            let s = line(self);
            if let Some(log) = &mut self.log {
                log.push(s);
            }
        }
    }

    /// Best-effort path of an inode, for the log.
    pub fn path_hint(&self, ino: Ino) -> String {
        let mut parts = Vec::new();
        let mut cur = ino;
        for _ in 0..64 {
            if cur == ROOT {
                break;
            }
            let Some(node) = self.inodes.get(&cur) else {
                parts.push("?".to_string());
                break;
            };
            parts.push(node.hint_name.to_string_lossy().into_owned());
            cur = node.hint_parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    fn node(&self, ino: Ino) -> Result<&Inode> {
        self.inodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn node_mut(&mut self, ino: Ino) -> Result<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: Ino) -> Result<&DirBody> {
        match &self.node(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Result<&mut DirBody> {
        match &mut self.node_mut(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: Ino) -> Result<(&mut FileBody, &mut Meta)> {
        let node = self.node_mut(ino)?;
        match &mut node.body {
            Body::File(f) => Ok((f, &mut node.meta)),
            Body::Dir(_) => Err(libc::EISDIR),
        }
    }

    /// Whether the inode exists.
    pub fn exists(&self, ino: Ino) -> bool {
        self.inodes.contains_key(&ino)
    }

    pub fn kind(&self, ino: Ino) -> Result<Kind> {
        Ok(self.node(ino)?.kind())
    }

    /// Looks a name up in a directory's live entries.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Ino> {
        self.dir(parent)?
            .live
            .get(name)
            .copied()
            .ok_or(libc::ENOENT)
    }

    /// Live attributes.
    pub fn attr(&self, ino: Ino) -> Result<Attr> {
        let node = self.node(ino)?;
        let (size, nlink) = match &node.body {
            Body::File(f) => (f.live.len() as u64, node.live_links),
            Body::Dir(d) => {
                let subdirs = d
                    .live
                    .values()
                    .filter(|c| matches!(self.inodes.get(c).map(|n| n.kind()), Some(Kind::Dir)))
                    .count() as u32;
                // Unix convention: "." and the parent's entry, plus each subdirectory's "..".
                let base = if node.live_links > 0 { 2 } else { 1 };
                (4096, base + subdirs)
            }
        };
        Ok(Attr {
            ino,
            kind: node.kind(),
            size,
            nlink,
            meta: node.meta,
            crtime: node.crtime,
        })
    }

    /// Live entries of a directory, in name order.
    pub fn readdir(&self, ino: Ino) -> Result<Vec<(OsString, Ino, Kind)>> {
        let d = self.dir(ino)?;
        Ok(d.live
            .iter()
            .filter_map(|(name, &c)| self.inodes.get(&c).map(|n| (name.clone(), c, n.kind())))
            .collect())
    }

    /// Live parent of a directory (the root is its own parent).
    pub fn parent_of_dir(&self, ino: Ino) -> Result<Ino> {
        Ok(self.dir(ino)?.parent)
    }

    fn touch_dir(&mut self, ino: Ino) {
        let t = now();
        if let Some(node) = self.inodes.get_mut(&ino) {
            node.meta.mtime = t;
            node.meta.ctime = t;
            if let Body::Dir(d) = &mut node.body {
                d.dirty = true;
            }
        }
    }

    fn check_name(name: &OsStr) -> Result<()> {
        if name.is_empty() || name == "." || name == ".." {
            return Err(libc::EINVAL);
        }
        if name.len() > 255 {
            return Err(libc::ENAMETOOLONG);
        }
        Ok(())
    }

    fn new_inode(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Ino> {
        Self::check_name(name)?;
        let d = self.dir(parent)?;
        if d.live.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let t = now();
        let meta = Meta {
            perm: perm & 0o7777,
            uid,
            gid,
            atime: t,
            mtime: t,
            ctime: t,
        };
        let body = match kind {
            Kind::File => Body::File(FileBody {
                live: Vec::new(),
                durable: Vec::new(),
                dirty: BTreeSet::new(),
                meta_dirty: false,
                unsynced_write_bytes: 0,
            }),
            Kind::Dir => Body::Dir(DirBody {
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
                parent,
                dirty: false,
            }),
        };
        self.inodes.insert(
            ino,
            Inode {
                meta,
                // A new inode's durable state is its empty state at creation: if only its
                // entry becomes durable, it comes back empty.
                durable_meta: meta,
                crtime: t,
                body,
                live_links: 1,
                durable_links: 0,
                open: 0,
                lookups: 0,
                hint_parent: parent,
                hint_name: name.to_os_string(),
            },
        );
        self.dir_mut(parent)?.live.insert(name.to_os_string(), ino);
        self.touch_dir(parent);
        Ok(ino)
    }

    /// Creates an empty regular file (`EEXIST` if the name exists).
    pub fn create_file(
        &mut self,
        parent: Ino,
        name: &OsStr,
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Ino> {
        let ino = self.new_inode(parent, name, Kind::File, perm, uid, gid)?;
        self.record(|m| format!("create {}", m.path_hint(ino)));
        Ok(ino)
    }

    /// Creates an empty directory (`EEXIST` if the name exists).
    pub fn mkdir(
        &mut self,
        parent: Ino,
        name: &OsStr,
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Ino> {
        let ino = self.new_inode(parent, name, Kind::Dir, perm, uid, gid)?;
        self.record(|m| format!("mkdir {}", m.path_hint(ino)));
        Ok(ino)
    }

    fn drop_live_link(&mut self, ino: Ino) {
        if let Some(node) = self.inodes.get_mut(&ino) {
            node.live_links = node.live_links.saturating_sub(1);
            node.meta.ctime = now();
        }
        self.maybe_gc(ino);
    }

    /// Removes a file's entry (`EISDIR` for a directory).
    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> Result<()> {
        let ino = self.lookup(parent, name)?;
        if self.kind(ino)? == Kind::Dir {
            return Err(libc::EISDIR);
        }
        self.record(|m| format!("unlink {}", m.path_hint(ino)));
        self.dir_mut(parent)?.live.remove(name);
        self.touch_dir(parent);
        self.drop_live_link(ino);
        Ok(())
    }

    /// Removes an empty directory's entry.
    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> Result<()> {
        let ino = self.lookup(parent, name)?;
        if !self.dir(ino)?.live.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        self.record(|m| format!("rmdir {}", m.path_hint(ino)));
        self.dir_mut(parent)?.live.remove(name);
        self.touch_dir(parent);
        self.drop_live_link(ino);
        Ok(())
    }

    /// True if `ino` is `dir` or one of its live ancestors.
    fn is_ancestor(&self, ino: Ino, mut dir: Ino) -> bool {
        for _ in 0..100_000 {
            if dir == ino {
                return true;
            }
            if dir == ROOT {
                return false;
            }
            match self.dir(dir) {
                Ok(d) => dir = d.parent,
                Err(_) => return false,
            }
        }
        false
    }

    /// `rename`/`renameat2`. Each directory involved must be fsync'd for its side of the
    /// change to be durable.
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        mode: RenameMode,
    ) -> Result<()> {
        Self::check_name(new_name)?;
        self.dir(new_parent)?;
        let src = self.lookup(parent, name)?;
        let src_kind = self.kind(src)?;
        let dst = self.dir(new_parent)?.live.get(new_name).copied();
        if parent == new_parent && name == new_name {
            return match (mode, dst) {
                (RenameMode::NoReplace, _) => Err(libc::EEXIST),
                _ => Ok(()),
            };
        }
        // A directory cannot move under itself.
        if src_kind == Kind::Dir && self.is_ancestor(src, new_parent) {
            return Err(libc::EINVAL);
        }
        match mode {
            RenameMode::NoReplace if dst.is_some() => return Err(libc::EEXIST),
            RenameMode::Exchange => {
                let Some(dst) = dst else {
                    return Err(libc::ENOENT);
                };
                if self.kind(dst)? == Kind::Dir && self.is_ancestor(dst, parent) {
                    return Err(libc::EINVAL);
                }
                self.record(|m| format!("exchange {} <-> {}", m.path_hint(src), m.path_hint(dst)));
                self.dir_mut(parent)?.live.insert(name.to_os_string(), dst);
                self.dir_mut(new_parent)?
                    .live
                    .insert(new_name.to_os_string(), src);
                self.set_parent(src, new_parent, new_name);
                self.set_parent(dst, parent, name);
                self.touch_dir(parent);
                self.touch_dir(new_parent);
                return Ok(());
            }
            _ => {}
        }
        if let Some(dst) = dst {
            if dst == src {
                return Ok(());
            }
            match (src_kind, self.kind(dst)?) {
                (Kind::Dir, Kind::Dir) => {
                    if !self.dir(dst)?.live.is_empty() {
                        return Err(libc::ENOTEMPTY);
                    }
                }
                (Kind::Dir, Kind::File) => return Err(libc::ENOTDIR),
                (Kind::File, Kind::Dir) => return Err(libc::EISDIR),
                (Kind::File, Kind::File) => {}
            }
        }
        self.record(|m| {
            let to = format!("{}/{}", m.path_hint(new_parent), new_name.to_string_lossy());
            format!(
                "rename {} -> {}",
                m.path_hint(src),
                to.replacen("//", "/", 1)
            )
        });
        self.dir_mut(parent)?.live.remove(name);
        self.dir_mut(new_parent)?
            .live
            .insert(new_name.to_os_string(), src);
        self.set_parent(src, new_parent, new_name);
        self.touch_dir(parent);
        self.touch_dir(new_parent);
        if let Some(dst) = dst {
            self.drop_live_link(dst);
        }
        Ok(())
    }

    fn set_parent(&mut self, ino: Ino, parent: Ino, name: &OsStr) {
        if let Some(node) = self.inodes.get_mut(&ino) {
            node.hint_parent = parent;
            node.hint_name = name.to_os_string();
            node.meta.ctime = now();
            if let Body::Dir(d) = &mut node.body {
                d.parent = parent;
            }
        }
    }

    /// Reads live content.
    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<&[u8]> {
        match &self.node(ino)?.body {
            Body::File(f) => {
                let len = f.live.len() as u64;
                let start = offset.min(len) as usize;
                let end = offset.saturating_add(size as u64).min(len) as usize;
                Ok(&f.live[start..end])
            }
            Body::Dir(_) => Err(libc::EISDIR),
        }
    }

    /// Writes live content (extending with zeros past the end); not durable until fsync.
    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        let end = offset.checked_add(data.len() as u64).ok_or(libc::EFBIG)?;
        if end > MAX_FILE_SIZE {
            return Err(libc::EFBIG);
        }
        let (f, meta) = self.file_mut(ino)?;
        if data.is_empty() {
            return Ok(0);
        }
        let old_len = f.live.len() as u64;
        if end > old_len {
            f.live.resize(end as usize, 0);
        }
        f.live[offset as usize..end as usize].copy_from_slice(data);
        f.dirty.extend(pages(offset.min(old_len), end));
        f.unsynced_write_bytes += data.len() as u64;
        f.meta_dirty = true;
        let t = now();
        meta.mtime = t;
        meta.ctime = t;
        Ok(data.len())
    }

    /// Truncates or extends (with zeros) the live content.
    pub fn set_len(&mut self, ino: Ino, len: u64) -> Result<()> {
        if len > MAX_FILE_SIZE {
            return Err(libc::EFBIG);
        }
        let (f, meta) = self.file_mut(ino)?;
        let old = f.live.len() as u64;
        f.live.resize(len as usize, 0);
        f.dirty.extend(pages(old.min(len), old.max(len)));
        f.meta_dirty = true;
        let t = now();
        meta.mtime = t;
        meta.ctime = t;
        self.record(|m| format!("truncate {} {old} -> {len}", m.path_hint(ino)));
        Ok(())
    }

    fn zero_range(&mut self, ino: Ino, offset: u64, end: u64) -> Result<()> {
        let (f, meta) = self.file_mut(ino)?;
        let end = end.min(f.live.len() as u64);
        if offset < end {
            f.live[offset as usize..end as usize].fill(0);
            f.dirty.extend(pages(offset, end));
            f.meta_dirty = true;
            let t = now();
            meta.mtime = t;
            meta.ctime = t;
        }
        Ok(())
    }

    /// `fallocate`: plain (extend), `KEEP_SIZE`, `PUNCH_HOLE|KEEP_SIZE` and `ZERO_RANGE`.
    /// Allocation itself is not modelled (memory is the disk), only size and zeroed ranges.
    pub fn fallocate(&mut self, ino: Ino, offset: u64, length: u64, mode: i32) -> Result<()> {
        let end = offset.checked_add(length).ok_or(libc::EFBIG)?;
        if length == 0 {
            return Err(libc::EINVAL);
        }
        if end > MAX_FILE_SIZE {
            return Err(libc::EFBIG);
        }
        let size = self.attr(ino)?.size;
        if self.kind(ino)? == Kind::Dir {
            return Err(libc::EISDIR);
        }
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let rest = mode & !libc::FALLOC_FL_KEEP_SIZE;
        match rest {
            0 => {
                if !keep && end > size {
                    self.set_len(ino, end)?;
                }
            }
            libc::FALLOC_FL_PUNCH_HOLE if keep => self.zero_range(ino, offset, end)?,
            libc::FALLOC_FL_ZERO_RANGE => {
                self.zero_range(ino, offset, end)?;
                if !keep && end > size {
                    self.set_len(ino, end)?;
                }
            }
            _ => return Err(libc::EOPNOTSUPP),
        }
        Ok(())
    }

    /// `chmod`/`chown`/`utimens`; each `None` leaves that field alone.
    pub fn set_attr(
        &mut self,
        ino: Ino,
        perm: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        atime: Option<SystemTime>,
        mtime: Option<SystemTime>,
    ) -> Result<()> {
        let node = self.node_mut(ino)?;
        let m = &mut node.meta;
        if let Some(p) = perm {
            m.perm = p & 0o7777;
        }
        if let Some(u) = uid {
            m.uid = u;
        }
        if let Some(g) = gid {
            m.gid = g;
        }
        if let Some(t) = atime {
            m.atime = t;
        }
        if let Some(t) = mtime {
            m.mtime = t;
        }
        m.ctime = now();
        match &mut node.body {
            Body::File(f) => f.meta_dirty = true,
            Body::Dir(d) => d.dirty = true,
        }
        Ok(())
    }

    /// `fsync`/`fdatasync` of a file: its content, size and metadata become durable (not its
    /// directory entry). On a directory it is `fsyncdir`.
    pub fn fsync(&mut self, ino: Ino) -> Result<()> {
        if self.kind(ino)? == Kind::Dir {
            return self.fsyncdir(ino);
        }
        self.fsyncs += 1;
        self.record(|m| {
            let size = m.attr(ino).map(|a| a.size).unwrap_or(0);
            format!("fsync {} ({size} bytes)", m.path_hint(ino))
        });
        let node = self.node_mut(ino)?;
        node.durable_meta = node.meta;
        if let Body::File(f) = &mut node.body {
            let len = f.live.len();
            f.durable.resize(len, 0);
            for &p in &f.dirty {
                let start = (p * PAGE) as usize;
                if start >= len {
                    break;
                }
                let end = (start + PAGE as usize).min(len);
                f.durable[start..end].copy_from_slice(&f.live[start..end]);
            }
            f.dirty.clear();
            f.meta_dirty = false;
            f.unsynced_write_bytes = 0;
        }
        Ok(())
    }

    /// `fsync` of a directory: its live entries (and metadata) become its durable entries,
    /// unless `ignore_dir_fsync` is set.
    pub fn fsyncdir(&mut self, ino: Ino) -> Result<()> {
        self.dir(ino)?;
        self.fsyncdirs += 1;
        if self.ignore_dir_fsync {
            self.fsyncdirs_ignored += 1;
            self.record(|m| format!("fsyncdir {} (ignored)", m.path_hint(ino)));
            return Ok(());
        }
        self.record(|m| format!("fsyncdir {}", m.path_hint(ino)));
        let node = self.node_mut(ino)?;
        node.durable_meta = node.meta;
        let Body::Dir(d) = &mut node.body else {
            return Err(libc::ENOTDIR);
        };
        let old = std::mem::replace(&mut d.durable, d.live.clone());
        d.dirty = false;
        let new = d.durable.clone();
        let mut gone = Vec::new();
        for (name, c) in &old {
            if new.get(name) != Some(c) {
                gone.push(*c);
            }
        }
        for (name, c) in &new {
            if old.get(name) != Some(c) {
                if let Some(n) = self.inodes.get_mut(c) {
                    n.durable_links += 1;
                }
            }
        }
        for c in gone {
            if let Some(n) = self.inodes.get_mut(&c) {
                n.durable_links = n.durable_links.saturating_sub(1);
            }
            self.maybe_gc(c);
        }
        Ok(())
    }

    /// An open handle on the inode (FUSE open/create/opendir).
    pub fn open(&mut self, ino: Ino) -> Result<()> {
        self.node_mut(ino)?.open += 1;
        Ok(())
    }

    /// The handle is released; an unlinked, non-durable inode may go.
    pub fn release(&mut self, ino: Ino) {
        if let Some(n) = self.inodes.get_mut(&ino) {
            n.open = n.open.saturating_sub(1);
        }
        self.maybe_gc(ino);
    }

    /// The kernel got one more reference to the inode (a FUSE entry reply).
    pub fn add_lookup(&mut self, ino: Ino) {
        if let Some(n) = self.inodes.get_mut(&ino) {
            n.lookups += 1;
        }
    }

    /// The kernel dropped `n` references (FUSE forget).
    pub fn forget(&mut self, ino: Ino, n: u64) {
        if let Some(node) = self.inodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
        }
        self.maybe_gc(ino);
    }

    /// Frees inodes that nothing can reach any more: no live or durable entry, no open handle,
    /// no kernel reference. A freed directory drops the durable links of its children in turn.
    fn maybe_gc(&mut self, ino: Ino) {
        let mut work = vec![ino];
        while let Some(ino) = work.pop() {
            if ino == ROOT {
                continue;
            }
            let Some(n) = self.inodes.get(&ino) else {
                continue;
            };
            if n.live_links > 0 || n.durable_links > 0 || n.open > 0 || n.lookups > 0 {
                continue;
            }
            if let Some(Inode {
                body: Body::Dir(d), ..
            }) = self.inodes.remove(&ino)
            {
                for c in d.durable.values() {
                    if let Some(cn) = self.inodes.get_mut(c) {
                        cn.durable_links = cn.durable_links.saturating_sub(1);
                    }
                    work.push(*c);
                }
            }
        }
    }

    /// Walks the durable tree from the root, breadth first in name order, the way a cut would
    /// rebuild it.
    fn durable_tree(&self) -> DurableTree {
        let mut reachable = HashSet::from([ROOT]);
        let mut parents = HashMap::from([(ROOT, ROOT)]);
        let mut duplicates = Vec::new();
        let mut queue = VecDeque::from([ROOT]);
        while let Some(dir) = queue.pop_front() {
            let Some(Inode {
                body: Body::Dir(d), ..
            }) = self.inodes.get(&dir)
            else {
                continue;
            };
            for (name, &c) in &d.durable {
                match self.inodes.get(&c).map(|n| n.kind()) {
                    Some(Kind::Dir) => {
                        if reachable.insert(c) {
                            parents.insert(c, dir);
                            queue.push_back(c);
                        } else {
                            duplicates.push((dir, name.clone()));
                        }
                    }
                    Some(Kind::File) => {
                        reachable.insert(c);
                    }
                    // Cannot happen (durable links keep inodes alive); drop it at the cut.
                    None => duplicates.push((dir, name.clone())),
                }
            }
        }
        DurableTree {
            reachable,
            parents,
            duplicates,
        }
    }

    fn pending(&self, tree: &DurableTree) -> CutReport {
        let mut r = CutReport::default();
        for (ino, n) in &self.inodes {
            let alive = tree.reachable.contains(ino);
            match &n.body {
                Body::File(f) => {
                    r.unsynced_write_bytes += f.unsynced_write_bytes;
                    if alive {
                        r.dropped_bytes += differing_bytes(f);
                        if !f.dirty.is_empty() || f.meta_dirty {
                            r.files_reverted += 1;
                        }
                    } else {
                        r.dropped_bytes += f.live.len() as u64;
                    }
                }
                Body::Dir(d) => {
                    if alive && (d.dirty || d.live != d.durable) {
                        r.dirs_reverted += 1;
                    }
                }
            }
            if !alive {
                r.inodes_removed += 1;
            }
        }
        r.duplicate_dir_entries_dropped = tree.duplicates.len() as u64;
        r
    }

    /// Simulates the power cut: every inode back to its durable state, unreachable inodes
    /// gone, all open handles and kernel references forgotten (the caller has killed every
    /// program and unmounted).
    pub fn power_cut(&mut self) -> CutReport {
        let tree = self.durable_tree();
        let report = self.pending(&tree);
        self.inodes.retain(|ino, _| tree.reachable.contains(ino));
        for (dir, name) in &tree.duplicates {
            if let Some(Inode {
                body: Body::Dir(d), ..
            }) = self.inodes.get_mut(dir)
            {
                d.durable.remove(name);
            }
        }
        let mut links: HashMap<Ino, u32> = HashMap::new();
        let mut names: HashMap<Ino, (Ino, OsString)> = HashMap::new();
        for (&ino, n) in &mut self.inodes {
            n.meta = n.durable_meta;
            n.open = 0;
            n.lookups = 0;
            match &mut n.body {
                Body::File(f) => {
                    f.live.resize(f.durable.len(), 0);
                    let len = f.durable.len();
                    for &p in &f.dirty {
                        let start = (p * PAGE) as usize;
                        if start >= len {
                            break;
                        }
                        let end = (start + PAGE as usize).min(len);
                        f.live[start..end].copy_from_slice(&f.durable[start..end]);
                    }
                    f.dirty.clear();
                    f.meta_dirty = false;
                    f.unsynced_write_bytes = 0;
                }
                Body::Dir(d) => {
                    d.live = d.durable.clone();
                    d.dirty = false;
                    d.parent = tree.parents.get(&ino).copied().unwrap_or(ROOT);
                    for (name, &c) in &d.durable {
                        *links.entry(c).or_default() += 1;
                        names.insert(c, (ino, name.clone()));
                    }
                }
            }
        }
        for (ino, n) in &mut self.inodes {
            let l = if *ino == ROOT {
                1
            } else {
                links.get(ino).copied().unwrap_or(0)
            };
            n.live_links = l;
            n.durable_links = l;
            if let Some((p, name)) = names.remove(ino) {
                n.hint_parent = p;
                n.hint_name = name;
            }
        }
        self.cuts += 1;
        self.last_cut = Some(report.clone());
        let r = report.clone();
        self.record(move |_| {
            format!(
                "power cut: dropped {} bytes ({} unsynced written), {} files and {} dirs reverted, {} inodes removed",
                r.dropped_bytes, r.unsynced_write_bytes, r.files_reverted, r.dirs_reverted, r.inodes_removed
            )
        });
        report
    }

    /// Counters and what a cut right now would drop.
    pub fn stats(&self) -> Stats {
        let tree = self.durable_tree();
        let p = self.pending(&tree);
        let mut pending_files = 0;
        let mut pending_dirs = 0;
        for n in self.inodes.values() {
            match &n.body {
                Body::File(f) => pending_files += u64::from(!f.dirty.is_empty() || f.meta_dirty),
                Body::Dir(d) => pending_dirs += u64::from(d.dirty || d.live != d.durable),
            }
        }
        Stats {
            fsyncs: self.fsyncs,
            fsyncdirs: self.fsyncdirs,
            fsyncdirs_ignored: self.fsyncdirs_ignored,
            cuts: self.cuts,
            inodes: self.inodes.len() as u64,
            unsynced_write_bytes: p.unsynced_write_bytes,
            pending_bytes: p.dropped_bytes,
            pending_files,
            pending_dirs,
            last_cut: self.last_cut.clone(),
        }
    }

    /// Resolves a `/`-separated path (relative to the root) in the live tree.
    pub fn resolve(&self, path: &str) -> Result<Ino> {
        let mut ino = ROOT;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            ino = self.lookup(ino, OsStr::new(part))?;
        }
        Ok(ino)
    }

    /// The whole tree as `path -> node`, either live (what programs see now) or durable (what
    /// a cut would leave, computed the same way the cut does). The root is `""`.
    pub fn snapshot(&self, durable: bool) -> BTreeMap<String, SnapNode> {
        let tree = durable.then(|| self.durable_tree());
        let dups: HashSet<(Ino, OsString)> = tree
            .as_ref()
            .map(|t| t.duplicates.iter().cloned().collect())
            .unwrap_or_default();
        let mut out = BTreeMap::new();
        out.insert(String::new(), SnapNode::Dir);
        let mut queue = VecDeque::from([(ROOT, String::new())]);
        let mut seen = HashSet::from([ROOT]);
        while let Some((dir, path)) = queue.pop_front() {
            let Some(Inode {
                body: Body::Dir(d), ..
            }) = self.inodes.get(&dir)
            else {
                continue;
            };
            let entries = if durable { &d.durable } else { &d.live };
            for (name, &c) in entries {
                if dups.contains(&(dir, name.clone())) {
                    continue;
                }
                let p = format!("{path}/{}", name.to_string_lossy());
                match self.inodes.get(&c).map(|n| &n.body) {
                    Some(Body::File(f)) => {
                        let content = if durable { &f.durable } else { &f.live };
                        out.insert(p, SnapNode::File(content.clone()));
                    }
                    // A directory seen twice (live trees have none; durable duplicates are
                    // skipped above) is listed once.
                    Some(Body::Dir(_)) if seen.insert(c) => {
                        out.insert(p.clone(), SnapNode::Dir);
                        queue.push_back((c, p));
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// Bytes of live file content in memory (for statfs).
    pub fn live_bytes(&self) -> u64 {
        self.inodes
            .values()
            .map(|n| match &n.body {
                Body::File(f) => f.live.len() as u64,
                Body::Dir(_) => 0,
            })
            .sum()
    }

    /// Number of inodes in memory (for tests of garbage collection).
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn file(m: &mut Model, parent: Ino, name: &str, data: &[u8]) -> Ino {
        let ino = m.create_file(parent, n(name), 0o644, 0, 0).unwrap();
        m.write(ino, 0, data).unwrap();
        ino
    }

    fn content(m: &Model, path: &str) -> Option<Vec<u8>> {
        let ino = m.resolve(path).ok()?;
        Some(m.read(ino, 0, u32::MAX).unwrap().to_vec())
    }

    #[test]
    fn unsynced_write_is_dropped_and_synced_write_kept() {
        let mut m = Model::new(false);
        let f = file(&mut m, ROOT, "a", b"v1");
        m.fsync(f).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.write(f, 0, b"v2-longer").unwrap();
        assert_eq!(content(&m, "a").unwrap(), b"v2-longer");
        let r = m.power_cut();
        assert_eq!(content(&m, "a").unwrap(), b"v1");
        assert_eq!(r.unsynced_write_bytes, 9);
        // "v2-longer" over "v1": one differing byte plus seven bytes past the durable end.
        assert_eq!(r.dropped_bytes, 8);
        m.write(f, 0, b"v3").unwrap();
        m.fsync(f).unwrap();
        m.power_cut();
        assert_eq!(content(&m, "a").unwrap(), b"v3");
    }

    #[test]
    fn truncation_is_pending_until_fsync() {
        let mut m = Model::new(false);
        let f = file(&mut m, ROOT, "a", &[7u8; 10_000]);
        m.fsync(f).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.set_len(f, 0).unwrap();
        m.set_len(f, 9000).unwrap();
        assert_eq!(content(&m, "a").unwrap(), vec![0u8; 9000]);
        m.power_cut();
        assert_eq!(content(&m, "a").unwrap(), vec![7u8; 10_000]);
        m.set_len(f, 5).unwrap();
        m.fsync(f).unwrap();
        m.set_len(f, 6000).unwrap();
        m.power_cut();
        assert_eq!(content(&m, "a").unwrap(), vec![7u8; 5]);
    }

    #[test]
    fn new_file_needs_its_directory_fsynced() {
        let mut m = Model::new(false);
        let f = file(&mut m, ROOT, "a", b"data");
        m.fsync(f).unwrap();
        m.power_cut();
        assert!(m.resolve("a").is_err());
        assert!(!m.exists(f));

        let f = file(&mut m, ROOT, "a", b"data");
        m.fsyncdir(ROOT).unwrap();
        m.power_cut();
        // The entry is durable, the content was never fsync'd: an empty file.
        assert_eq!(content(&m, "a").unwrap(), b"");
        m.write(f, 0, b"data").unwrap();
        m.fsync(f).unwrap();
        m.power_cut();
        assert_eq!(content(&m, "a").unwrap(), b"data");
    }

    #[test]
    fn unlink_and_rename_are_pending_until_dir_fsync() {
        let mut m = Model::new(false);
        let f = file(&mut m, ROOT, "a", b"A");
        m.fsync(f).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.unlink(ROOT, n("a")).unwrap();
        assert!(m.resolve("a").is_err());
        m.power_cut();
        assert_eq!(content(&m, "a").unwrap(), b"A");

        m.rename(ROOT, n("a"), ROOT, n("b"), RenameMode::Replace)
            .unwrap();
        m.power_cut();
        assert_eq!(content(&m, "a").unwrap(), b"A");
        assert!(m.resolve("b").is_err());

        m.rename(ROOT, n("a"), ROOT, n("b"), RenameMode::Replace)
            .unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.power_cut();
        assert!(m.resolve("a").is_err());
        assert_eq!(content(&m, "b").unwrap(), b"A");

        m.unlink(ROOT, n("b")).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.power_cut();
        assert!(m.resolve("b").is_err());
        assert_eq!(m.inode_count(), 1);
    }

    #[test]
    fn rename_across_directories_can_leave_both_or_neither() {
        let mut m = Model::new(false);
        let mut dirs = Vec::new();
        for name in ["d1", "d2", "d3", "d4"] {
            dirs.push(m.mkdir(ROOT, n(name), 0o755, 0, 0).unwrap());
        }
        let [d1, d2, d3, d4] = dirs[..] else {
            unreachable!()
        };
        let f = file(&mut m, d1, "f", b"F");
        let g = file(&mut m, d3, "g", b"G");
        for ino in [f, g, d1, d3, ROOT] {
            m.fsync(ino).unwrap();
        }

        // Only the target fsync'd: in both.
        m.rename(d1, n("f"), d2, n("f"), RenameMode::Replace)
            .unwrap();
        m.fsyncdir(d2).unwrap();
        // Only the source fsync'd: in neither.
        m.rename(d3, n("g"), d4, n("g"), RenameMode::Replace)
            .unwrap();
        m.fsyncdir(d3).unwrap();
        let r = m.power_cut();
        assert_eq!(content(&m, "d1/f").unwrap(), b"F");
        assert_eq!(content(&m, "d2/f").unwrap(), b"F");
        assert_eq!(m.attr(f).unwrap().nlink, 2);
        assert!(m.resolve("d3/g").is_err());
        assert!(m.resolve("d4/g").is_err());
        assert!(!m.exists(g));
        assert_eq!(r.inodes_removed, 1);
    }

    #[test]
    fn directory_in_two_durable_parents_is_kept_once() {
        let mut m = Model::new(false);
        let a = m.mkdir(ROOT, n("a"), 0o755, 0, 0).unwrap();
        let b = m.mkdir(ROOT, n("b"), 0o755, 0, 0).unwrap();
        let c = m.mkdir(a, n("c"), 0o755, 0, 0).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.fsyncdir(a).unwrap();
        m.rename(a, n("c"), b, n("c"), RenameMode::Replace).unwrap();
        m.fsyncdir(b).unwrap();
        let r = m.power_cut();
        assert_eq!(r.duplicate_dir_entries_dropped, 1);
        assert_eq!(m.resolve("a/c").unwrap(), c);
        assert!(m.resolve("b/c").is_err());
        assert_eq!(m.parent_of_dir(c).unwrap(), a);
    }

    #[test]
    fn durable_cycle_is_broken() {
        let mut m = Model::new(false);
        let a = m.mkdir(ROOT, n("a"), 0o755, 0, 0).unwrap();
        let b = m.mkdir(a, n("b"), 0o755, 0, 0).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.fsyncdir(a).unwrap();
        m.rename(a, n("b"), ROOT, n("b"), RenameMode::Replace)
            .unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.rename(ROOT, n("a"), b, n("a"), RenameMode::Replace)
            .unwrap();
        m.fsyncdir(b).unwrap();
        // Durable: / -> {a, b}, a -> {b}, b -> {a}.
        m.power_cut();
        let snap = m.snapshot(false);
        let paths: Vec<_> = snap.keys().cloned().collect();
        assert_eq!(paths, vec!["", "/a", "/b"]);
    }

    #[test]
    fn nested_mkdir_needs_each_parent_fsynced() {
        let mut m = Model::new(false);
        let a = m.mkdir(ROOT, n("a"), 0o755, 0, 0).unwrap();
        let b = m.mkdir(a, n("b"), 0o755, 0, 0).unwrap();
        m.fsyncdir(b).unwrap();
        m.fsyncdir(a).unwrap();
        m.power_cut();
        assert!(m.resolve("a").is_err());
        assert_eq!(m.inode_count(), 1);

        let a = m.mkdir(ROOT, n("a"), 0o755, 0, 0).unwrap();
        m.fsyncdir(ROOT).unwrap();
        let b = m.mkdir(a, n("b"), 0o755, 0, 0).unwrap();
        m.fsyncdir(a).unwrap();
        m.mkdir(b, n("c"), 0o755, 0, 0).unwrap();
        m.fsyncdir(b).unwrap();
        m.power_cut();
        assert!(m.resolve("a/b/c").is_ok());
    }

    #[test]
    fn ignore_dir_fsync_keeps_entries_volatile() {
        let mut m = Model::new(true);
        let f = file(&mut m, ROOT, "a", b"x");
        m.fsync(f).unwrap();
        m.fsyncdir(ROOT).unwrap();
        assert_eq!(m.stats().fsyncdirs_ignored, 1);
        m.power_cut();
        assert!(m.resolve("a").is_err());
    }

    #[test]
    fn unlinked_open_file_is_freed_on_release_only_if_not_durable() {
        let mut m = Model::new(false);
        let f = file(&mut m, ROOT, "a", b"x");
        m.open(f).unwrap();
        m.unlink(ROOT, n("a")).unwrap();
        assert!(m.exists(f));
        m.write(f, 1, b"y").unwrap();
        m.release(f);
        assert!(!m.exists(f));

        // A durable entry keeps the inode (and what is fsync'd to it) alive.
        let f = file(&mut m, ROOT, "b", b"old");
        m.fsync(f).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.open(f).unwrap();
        m.unlink(ROOT, n("b")).unwrap();
        m.write(f, 0, b"new").unwrap();
        m.fsync(f).unwrap();
        m.release(f);
        assert!(m.exists(f));
        m.power_cut();
        assert_eq!(content(&m, "b").unwrap(), b"new");
    }

    #[test]
    fn rename_errors() {
        let mut m = Model::new(false);
        let a = m.mkdir(ROOT, n("a"), 0o755, 0, 0).unwrap();
        let b = m.mkdir(a, n("b"), 0o755, 0, 0).unwrap();
        file(&mut m, ROOT, "f", b"f");
        file(&mut m, ROOT, "g", b"g");
        file(&mut m, b, "x", b"x");
        let e = |r: Result<()>| r.unwrap_err();
        assert_eq!(
            e(m.rename(ROOT, n("a"), b, n("a"), RenameMode::Replace)),
            libc::EINVAL
        );
        assert_eq!(
            e(m.rename(ROOT, n("f"), ROOT, n("g"), RenameMode::NoReplace)),
            libc::EEXIST
        );
        assert_eq!(
            e(m.rename(ROOT, n("f"), ROOT, n("a"), RenameMode::Replace)),
            libc::EISDIR
        );
        assert_eq!(
            e(m.rename(ROOT, n("a"), ROOT, n("f"), RenameMode::Replace)),
            libc::ENOTDIR
        );
        let e2 = m.mkdir(ROOT, n("e"), 0o755, 0, 0).unwrap();
        assert_eq!(
            e(m.rename(ROOT, n("e"), a, n("b"), RenameMode::Replace)),
            libc::ENOTEMPTY
        );
        assert_eq!(
            e(m.rename(ROOT, n("nope"), ROOT, n("z"), RenameMode::Replace)),
            libc::ENOENT
        );
        assert_eq!(e(m.rmdir(ROOT, n("a"))), libc::ENOTEMPTY);
        assert_eq!(e(m.unlink(ROOT, n("a"))), libc::EISDIR);
        assert_eq!(e(m.rmdir(ROOT, n("f"))), libc::ENOTDIR);
        // Replace an empty directory, then exchange two files.
        m.rename(a, n("b"), ROOT, n("e"), RenameMode::Replace)
            .unwrap();
        assert!(!m.exists(e2));
        m.rename(ROOT, n("f"), ROOT, n("g"), RenameMode::Exchange)
            .unwrap();
        assert_eq!(content(&m, "f").unwrap(), b"g");
        assert_eq!(content(&m, "g").unwrap(), b"f");
        assert_eq!(m.parent_of_dir(b).unwrap(), ROOT);
    }

    #[test]
    fn fallocate_modes() {
        let mut m = Model::new(false);
        let f = file(&mut m, ROOT, "a", &[1u8; 100]);
        m.fallocate(f, 50, 100, 0).unwrap();
        assert_eq!(m.attr(f).unwrap().size, 150);
        m.fallocate(f, 0, 1000, libc::FALLOC_FL_KEEP_SIZE).unwrap();
        assert_eq!(m.attr(f).unwrap().size, 150);
        m.fallocate(
            f,
            10,
            20,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        )
        .unwrap();
        let c = content(&m, "a").unwrap();
        assert_eq!(&c[..10], &[1u8; 10]);
        assert_eq!(&c[10..30], &[0u8; 20]);
        assert_eq!(&c[30..100], &[1u8; 70]);
        assert_eq!(
            m.fallocate(f, 0, 1, libc::FALLOC_FL_COLLAPSE_RANGE)
                .unwrap_err(),
            libc::EOPNOTSUPP
        );
    }

    #[test]
    fn stats_report_pending_work() {
        let mut m = Model::new(false);
        let f = file(&mut m, ROOT, "a", &[1u8; 5000]);
        let s = m.stats();
        assert_eq!(s.unsynced_write_bytes, 5000);
        // The file itself is not durably reachable: all of it would go.
        assert_eq!(s.pending_bytes, 5000);
        assert_eq!(s.pending_files, 1);
        assert_eq!(s.pending_dirs, 1);
        m.fsyncdir(ROOT).unwrap();
        m.fsync(f).unwrap();
        let s = m.stats();
        assert_eq!(
            (s.pending_bytes, s.pending_files, s.pending_dirs),
            (0, 0, 0)
        );
        m.write(f, 4096, &[1u8; 10]).unwrap(); // same bytes as before: nothing differs
        m.write(f, 0, &[2u8; 3]).unwrap();
        let s = m.stats();
        assert_eq!(s.unsynced_write_bytes, 13);
        assert_eq!(s.pending_bytes, 3);
        let r = m.power_cut();
        assert_eq!(r.dropped_bytes, 3);
        assert_eq!(r.files_reverted, 1);
        assert_eq!(m.stats().last_cut, Some(r));
    }

    #[test]
    fn metadata_is_durable_with_fsync() {
        let mut m = Model::new(false);
        let f = file(&mut m, ROOT, "a", b"");
        m.fsyncdir(ROOT).unwrap();
        m.fsync(f).unwrap();
        m.set_attr(f, Some(0o600), None, None, None, None).unwrap();
        m.power_cut();
        assert_eq!(m.attr(f).unwrap().meta.perm, 0o644);
        m.set_attr(f, Some(0o600), None, None, None, None).unwrap();
        m.fsync(f).unwrap();
        m.power_cut();
        assert_eq!(m.attr(f).unwrap().meta.perm, 0o600);
    }

    #[test]
    fn op_log_records_durability_events() {
        let mut m = Model::new(false);
        m.record_ops(true);
        let d = m.mkdir(ROOT, n("d"), 0o755, 0, 0).unwrap();
        let f = file(&mut m, d, "x", b"1");
        m.fsync(f).unwrap();
        m.fsyncdir(d).unwrap();
        m.rename(d, n("x"), ROOT, n("y"), RenameMode::Replace)
            .unwrap();
        let log = m.take_log();
        assert_eq!(
            log,
            vec![
                "mkdir /d",
                "create /d/x",
                "fsync /d/x (1 bytes)",
                "fsyncdir /d",
                "rename /d/x -> /y"
            ]
        );
    }
}

//! lazyfs, the test suite's power-loss simulator: a FUSE filesystem, served from a thread of the calling process, that simulates
//! power loss the way Jepsen's LazyFS does, to prove that data a program acknowledged after
//! fsync survives a power cut. Everything written is kept in memory and visible at once, but
//! only what was fsync'd (file content) or fsyncdir'd (directory entries) survives
//! [`LazyFs::power_cut`]; see [`model`] for the exact rules.
//!
//! A cut is: the caller kills every program using the mount, then `power_cut` unmounts (which
//! drops the kernel's page cache and dentries for the mount), resets the model to its durable
//! state, and mounts a fresh session at the same mountpoint. Needs root and `/dev/fuse`; the
//! mount is done with mount(2) directly (fuser's pure-Rust path), so no libfuse or
//! `fusermount3` is involved.
//!
//! Kernel settings chosen for correctness with several processes (e.g. a daemon and a CLI on
//! one SQLite database): zero attribute and entry TTLs (no stale metadata), page cache kept
//! across opens (`FOPEN_KEEP_CACHE`: every change goes through this kernel, so the cache is
//! coherent, and SQLite's `-shm` is shared through it by `mmap(MAP_SHARED)`), no `direct_io`
//! (shared mmap needs the page cache), and POSIX/flock locks left to the kernel (fuser does not
//! ask for `FUSE_POSIX_LOCKS`, so the kernel does local locking for fcntl locks).

#[cfg(test)]
mod fuse_tests;
pub mod model;
#[cfg(test)]
mod model_random;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    SessionACL, TimeOrNow, WriteFlags,
};
use model::{Attr, Ino, Kind, RenameMode};
pub use model::{CutReport, Model, Stats};

/// Attribute and entry cache lifetime given to the kernel: zero, so a change made by one
/// process is seen by the next lookup of another, and nothing stale crosses a cut.
const TTL: Duration = Duration::ZERO;
/// How long an unmount keeps retrying on `EBUSY` (released files can take a moment to be
/// dropped by the kernel after a killed process is reaped).
const UNMOUNT_PATIENCE: Duration = Duration::from_secs(5);

/// Mount options.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Makes directory fsyncs no-ops: directory changes never become durable (the root stays
    /// as created at mount). Shows what happens to a program that relies on them.
    pub ignore_dir_fsync: bool,
    /// Records durability-relevant operations (create, unlink, rename, truncate, fsync,
    /// fsyncdir, cut) with paths; read them with [`LazyFs::take_op_log`].
    pub record_ops: bool,
}

/// State shared by the FUSE thread and the [`LazyFs`] handle.
struct Shared {
    model: Model,
    /// Directory listings taken at `readdir` offset 0, served for later offsets so a listing
    /// stays consistent while entries change.
    dir_listings: HashMap<u64, Vec<(Ino, FileType, OsString)>>,
    next_fh: u64,
}

/// A mounted lazyfs. Dropping it unmounts.
pub struct LazyFs {
    shared: Arc<Mutex<Shared>>,
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic in a FUSE handler must not wedge the filesystem for the rest of the test.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl LazyFs {
    /// Mounts an empty lazyfs at `mountpoint` (created if missing). Its root is durable.
    pub fn mount(mountpoint: &Path, opts: Options) -> io::Result<LazyFs> {
        clear_stale_mount(mountpoint);
        std::fs::create_dir_all(mountpoint)?;
        let mut model = Model::new(opts.ignore_dir_fsync);
        model.record_ops(opts.record_ops);
        let shared = Arc::new(Mutex::new(Shared {
            model,
            dir_listings: HashMap::new(),
            next_fh: 1,
        }));
        let session = spawn(mountpoint, shared.clone())?;
        Ok(LazyFs {
            shared,
            session: Some(session),
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    /// Simulates a power cut. The caller must have killed (and reaped) every process using
    /// the mount and closed its own files on it. Unmounts, drops everything not durable, and
    /// mounts again at the same place; returns what was dropped and how long it took.
    pub fn power_cut(&mut self) -> io::Result<CutReport> {
        let t0 = Instant::now();
        self.unmount_session()?;
        let t1 = Instant::now();
        let mut report = {
            let mut s = lock(&self.shared);
            s.dir_listings.clear();
            s.model.power_cut()
        };
        let t2 = Instant::now();
        self.session = Some(spawn(&self.mountpoint, self.shared.clone())?);
        report.unmount_time = t1 - t0;
        report.remount_time = t2.elapsed();
        Ok(report)
    }

    /// Counters and what a cut right now would drop.
    pub fn stats(&self) -> Stats {
        lock(&self.shared).model.stats()
    }

    /// Turns `ignore_dir_fsync` on or off from now on.
    pub fn set_ignore_dir_fsync(&self, ignore: bool) {
        lock(&self.shared).model.set_ignore_dir_fsync(ignore);
    }

    /// Takes the operations recorded so far (empty unless `record_ops`).
    pub fn take_op_log(&self) -> Vec<String> {
        lock(&self.shared).model.take_log()
    }

    /// Unmounts now, reporting errors (dropping also unmounts, silently).
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_session()
    }

    fn unmount_session(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        if let Err(e) = unmount_retrying(&self.mountpoint, UNMOUNT_PATIENCE) {
            self.session = Some(session);
            return Err(e);
        }
        // Already unmounted: only join fuser's thread, which ends when the kernel closes the
        // connection. (Not `umount_and_join`: fuser 0.18's is_mounted() check takes the
        // POLLERR of the closed connection for "still mounted" and its second umount(2) then
        // fails with EINVAL. Its Mount's drop makes the same check, and only logs the EINVAL.)
        session.join()?;
        // Files the kernel had not released before the unmount are gone with the connection.
        lock(&self.shared).dir_listings.clear();
        Ok(())
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if self.session.is_some() && self.unmount_session().is_err() {
            // Someone still has a file open: detach lazily so the mountpoint is usable again;
            // the FUSE thread keeps serving the remaining users until they close.
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
            self.session = None;
        }
    }
}

/// Unmounts, retrying on `EBUSY` for a while. `EINVAL` means nothing is mounted there.
fn unmount_retrying(mountpoint: &Path, patience: Duration) -> io::Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        match nix::mount::umount2(mountpoint, nix::mount::MntFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) if Instant::now() < deadline => {
                sleep(Duration::from_millis(5))
            }
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!(
                        "unmount {}: {e} (is a file still open on it?)",
                        mountpoint.display()
                    ),
                ))
            }
        }
    }
}

/// A test process that died without unmounting leaves a dead FUSE mount (`ENOTCONN` on every
/// access) that would make the next mount at that place fail: detach it.
fn clear_stale_mount(mountpoint: &Path) {
    if let Err(e) = std::fs::metadata(mountpoint) {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn spawn(mountpoint: &Path, shared: Arc<Mutex<Shared>>) -> io::Result<BackgroundSession> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("lazyfs".into()),
        MountOption::Subtype("lazyfs".into()),
        // The kernel checks permissions against our attributes (root passes), so `access`
        // and permission logic need not be reimplemented here.
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    // allow_other: the programs under test may run as another user than the test.
    config.acl = SessionACL::All;
    // One request loop: the model is behind one mutex anyway, and no handler blocks.
    config.n_threads = Some(1);
    fuser::spawn_mount(Adapter { shared }, mountpoint, &config)
}

/// The `fuser::Filesystem` face of the model.
struct Adapter {
    shared: Arc<Mutex<Shared>>,
}

fn errno(e: model::Errno) -> Errno {
    Errno::from_i32(e)
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.meta.atime,
        mtime: a.meta.mtime,
        ctime: a.meta.ctime,
        crtime: a.crtime,
        kind: file_type(a.kind),
        perm: a.meta.perm as u16,
        nlink: a.nlink,
        uid: a.meta.uid,
        gid: a.meta.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Shared {
    fn new_fh(&mut self) -> u64 {
        self.next_fh += 1;
        self.next_fh
    }

    /// Reply helper: attributes of `ino`, counting the kernel's new reference.
    fn entry(&mut self, ino: Ino) -> model::Result<FileAttr> {
        let a = self.model.attr(ino)?;
        self.model.add_lookup(ino);
        Ok(file_attr(&a))
    }

    fn create(
        &mut self,
        req: &Request,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> model::Result<(FileAttr, u64)> {
        // The kernel sends CREATE after a negative lookup, but another process may have
        // created the name in between: then this is a plain open (or EEXIST with O_EXCL).
        let ino = match self.model.lookup(parent, name) {
            Ok(ino) => {
                if flags & libc::O_EXCL != 0 {
                    return Err(libc::EEXIST);
                }
                if self.model.kind(ino)? == Kind::Dir {
                    return Err(libc::EISDIR);
                }
                if flags & libc::O_TRUNC != 0 {
                    self.model.set_len(ino, 0)?;
                }
                ino
            }
            Err(libc::ENOENT) => {
                self.model
                    .create_file(parent, name, mode & !umask, req.uid(), req.gid())?
            }
            Err(e) => return Err(e),
        };
        self.model.open(ino)?;
        let attr = self.entry(ino)?;
        Ok((attr, self.new_fh()))
    }
}

impl Adapter {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }
}

impl Filesystem for Adapter {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.lock();
        match s.model.lookup(parent.0, name).and_then(|ino| s.entry(ino)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.lock().model.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.lock().model.attr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.lock();
        let r = (|| {
            if let Some(size) = size {
                s.model.set_len(ino.0, size)?;
            }
            if mode.is_some()
                || uid.is_some()
                || gid.is_some()
                || atime.is_some()
                || mtime.is_some()
            {
                s.model
                    .set_attr(ino.0, mode, uid, gid, atime.map(time), mtime.map(time))?;
            }
            s.model.attr(ino.0)
        })();
        match r {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Only regular files exist in this filesystem.
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let mut s = self.lock();
        let r = s
            .model
            .create_file(parent.0, name, mode & !umask, req.uid(), req.gid())
            .and_then(|ino| s.entry(ino));
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut s = self.lock();
        let r = s
            .model
            .mkdir(parent.0, name, mode & !umask, req.uid(), req.gid())
            .and_then(|ino| s.entry(ino));
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.lock().model.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.lock().model.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = if flags.is_empty() {
            RenameMode::Replace
        } else if flags == RenameFlags::RENAME_NOREPLACE {
            RenameMode::NoReplace
        } else if flags == RenameFlags::RENAME_EXCHANGE {
            RenameMode::Exchange
        } else {
            return reply.error(Errno::EINVAL);
        };
        match self
            .lock()
            .model
            .rename(parent.0, name, newparent.0, newname, mode)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.lock();
        let r = (|| {
            if s.model.kind(ino.0)? == Kind::Dir {
                return Err(libc::EISDIR);
            }
            // The kernel normally truncates through setattr; honour the flag if it comes.
            if flags.0 & libc::O_TRUNC != 0 {
                s.model.set_len(ino.0, 0)?;
            }
            s.model.open(ino.0)?;
            Ok(s.new_fh())
        })();
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = self.lock();
        match s.model.read(ino.0, offset, size) {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // The kernel already turned O_APPEND into the end-of-file offset (it keeps i_size
        // exact: every write goes through it), and page-cache writeback of mmap'd pages must
        // land at its own offset, so the offset is always used as given.
        match self.lock().model.write(ino.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.lock().model.release(ino.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.lock().model.fsync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.lock();
        let r = (|| {
            s.model.parent_of_dir(ino.0)?;
            s.model.open(ino.0)?;
            Ok(s.new_fh())
        })();
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut s = self.lock();
        if offset == 0 || !s.dir_listings.contains_key(&fh.0) {
            let listing = (|| {
                let parent = s.model.parent_of_dir(ino.0)?;
                let mut v = vec![
                    (ino.0, FileType::Directory, OsString::from(".")),
                    (parent, FileType::Directory, OsString::from("..")),
                ];
                for (name, c, k) in s.model.readdir(ino.0)? {
                    v.push((c, file_type(k), name));
                }
                Ok(v)
            })();
            match listing {
                Ok(v) => {
                    s.dir_listings.insert(fh.0, v);
                }
                Err(e) => return reply.error(errno(e)),
            }
        }
        let listing = &s.dir_listings[&fh.0];
        for (i, (c, k, name)) in listing.iter().enumerate().skip(offset as usize) {
            // The offset given back is the index of the next entry.
            if reply.add(INodeNo(*c), i as u64 + 1, *k, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = self.lock();
        s.dir_listings.remove(&fh.0);
        s.model.release(ino.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.lock().model.fsyncdir(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Memory is the disk; report a roomy 64 GiB so space checks pass.
        let blocks = 1u64 << 24;
        let used = self.lock().model.live_bytes().div_ceil(4096);
        let files = 1u64 << 24;
        reply.statfs(
            blocks,
            blocks - used.min(blocks),
            blocks - used.min(blocks),
            files,
            files,
            4096,
            255,
            4096,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Only reached without default_permissions; existence is all we check.
        if self.lock().model.exists(ino.0) {
            reply.ok();
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.lock().create(req, parent.0, name, mode, umask, flags) {
            Ok((a, fh)) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.lock().model.fallocate(ino.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }
}

//! Power-cut behaviour through a real FUSE mount with plain `std::fs` programs: unsynced
//! writes, new files, unlink, rename (also across directories) and nested mkdir, plus a smoke
//! test of the POSIX operations the mount must support. Needs root and /dev/fuse.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{CutReport, LazyFs, Options};

#[test]
fn unsynced_write_is_lost_and_synced_write_kept() {
    let mut m = Mounted::new("write", Options::default());
    let a = m.p("a");
    write_synced(&a, b"v1");
    sync_dir(&m.dir);

    // Read it first so the kernel has the page cached: the cut must drop that cache.
    assert_eq!(read(&a).unwrap(), b"v1");
    let mut f = OpenOptions::new().write(true).open(&a).unwrap();
    f.write_all(b"v2, not synced").unwrap();
    drop(f);
    assert_eq!(read(&a).unwrap(), b"v2, not synced");
    let r = m.cut();
    assert_eq!(read(&a).unwrap(), b"v1");
    assert_eq!(r.unsynced_write_bytes, 14);
    assert_eq!(r.files_reverted, 1);

    let mut f = OpenOptions::new().write(true).open(&a).unwrap();
    f.write_all(b"v3").unwrap();
    f.sync_data().unwrap(); // fdatasync counts too
    drop(f);
    m.cut();
    assert_eq!(read(&a).unwrap(), b"v3");

    // Truncation is a pending change like any other.
    OpenOptions::new()
        .write(true)
        .open(&a)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert_eq!(read(&a).unwrap(), b"");
    m.cut();
    assert_eq!(read(&a).unwrap(), b"v3");
    fs::write(&a, b"").unwrap(); // O_TRUNC, no fsync
    m.cut();
    assert_eq!(read(&a).unwrap(), b"v3");
    assert!(m.fs().stats().fsyncs >= 2);
}

#[test]
fn new_file_needs_a_directory_fsync() {
    let mut m = Mounted::new("newfile", Options::default());
    let b = m.p("b");
    write_synced(&b, b"content");
    m.cut();
    // fsync of the file does not make its own entry durable.
    assert!(!b.exists());
    assert!(names(&m.dir).is_empty());

    write_synced(&b, b"content");
    sync_dir(&m.dir);
    m.cut();
    assert_eq!(read(&b).unwrap(), b"content");

    // An entry made durable before its content: the file comes back empty.
    let c = m.p("c");
    fs::write(&c, b"never synced").unwrap();
    sync_dir(&m.dir);
    m.cut();
    assert_eq!(read(&c).unwrap(), b"");
}

#[test]
fn unlink_and_rename_wait_for_the_directory_fsync() {
    let mut m = Mounted::new("unlink", Options::default());
    for (name, data) in [("x", b"X"), ("y", b"Y"), ("z", b"Z")] {
        write_synced(&m.p(name), data);
    }
    sync_dir(&m.dir);

    fs::remove_file(m.p("x")).unwrap();
    fs::rename(m.p("y"), m.p("y2")).unwrap();
    assert_eq!(names(&m.dir), ["y2", "z"]);
    m.cut();
    assert_eq!(names(&m.dir), ["x", "y", "z"]);
    assert_eq!(read(&m.p("x")).unwrap(), b"X");

    fs::remove_file(m.p("x")).unwrap();
    fs::rename(m.p("y"), m.p("y2")).unwrap();
    // Rename over an existing file.
    fs::rename(m.p("y2"), m.p("z")).unwrap();
    sync_dir(&m.dir);
    m.cut();
    assert_eq!(names(&m.dir), ["z"]);
    assert_eq!(read(&m.p("z")).unwrap(), b"Y");

    // RENAME_NOREPLACE.
    write_synced(&m.p("w"), b"W");
    let err = nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        &m.p("w"),
        nix::fcntl::AT_FDCWD,
        &m.p("z"),
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .unwrap_err();
    assert_eq!(err, nix::errno::Errno::EEXIST);
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        &m.p("w"),
        nix::fcntl::AT_FDCWD,
        &m.p("z"),
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    )
    .unwrap();
    assert_eq!(read(&m.p("z")).unwrap(), b"W");
    assert_eq!(read(&m.p("w")).unwrap(), b"Y");
}

#[test]
fn rename_across_directories_is_two_changes() {
    let mut m = Mounted::new("xdir", Options::default());
    for d in ["d1", "d2", "d3", "d4"] {
        fs::create_dir(m.p(d)).unwrap();
    }
    sync_dir(&m.dir);
    write_synced(&m.p("d1/f"), b"F");
    sync_dir(&m.p("d1"));
    write_synced(&m.p("d3/g"), b"G");
    sync_dir(&m.p("d3"));

    // Target fsync'd only: after the cut the file is in both directories.
    fs::rename(m.p("d1/f"), m.p("d2/f")).unwrap();
    sync_dir(&m.p("d2"));
    // Source fsync'd only: in neither.
    fs::rename(m.p("d3/g"), m.p("d4/g")).unwrap();
    sync_dir(&m.p("d3"));
    let r = m.cut();
    assert_eq!(read(&m.p("d1/f")).unwrap(), b"F");
    assert_eq!(read(&m.p("d2/f")).unwrap(), b"F");
    assert_eq!(fs::metadata(m.p("d2/f")).unwrap().nlink(), 2);
    assert!(!m.p("d3/g").exists());
    assert!(!m.p("d4/g").exists());
    assert_eq!(r.inodes_removed, 1);

    // Both fsync'd: a clean move.
    fs::rename(m.p("d2/f"), m.p("d4/f")).unwrap();
    fs::remove_file(m.p("d1/f")).unwrap();
    for d in ["d1", "d2", "d4"] {
        sync_dir(&m.p(d));
    }
    m.cut();
    assert_eq!(names(&m.p("d1")), Vec::<String>::new());
    assert_eq!(names(&m.p("d2")), Vec::<String>::new());
    assert_eq!(names(&m.p("d4")), ["f"]);
    assert_eq!(fs::metadata(m.p("d4/f")).unwrap().nlink(), 1);
}

#[test]
fn nested_mkdir_needs_each_parent_fsynced() {
    let mut m = Mounted::new("mkdir", Options::default());
    fs::create_dir_all(m.p("a/b/c")).unwrap();
    write_synced(&m.p("a/b/c/file"), b"data");
    sync_dir(&m.p("a/b/c"));
    m.cut();
    assert!(!m.p("a").exists());

    // What a careful program does: after each mkdir, fsync the parent.
    let mut cur = m.dir.clone();
    for part in ["a", "b", "c"] {
        let next = cur.join(part);
        fs::create_dir(&next).unwrap();
        sync_dir(&cur);
        cur = next;
    }
    write_synced(&m.p("a/b/c/file"), b"data");
    sync_dir(&m.p("a/b/c"));
    m.cut();
    assert_eq!(read(&m.p("a/b/c/file")).unwrap(), b"data");

    // rmdir is pending too.
    fs::remove_file(m.p("a/b/c/file")).unwrap();
    fs::remove_dir(m.p("a/b/c")).unwrap();
    m.cut();
    assert!(m.p("a/b/c/file").exists());
}

#[test]
fn ignore_dir_fsync_makes_new_entries_volatile() {
    let mut m = Mounted::new(
        "ignore",
        Options {
            ignore_dir_fsync: true,
            ..Options::default()
        },
    );
    write_synced(&m.p("f"), b"F");
    sync_dir(&m.dir);
    m.cut();
    assert!(!m.p("f").exists());
    let s = m.fs().stats();
    assert_eq!((s.fsyncdirs, s.fsyncdirs_ignored), (1, 1));
}

#[test]
fn posix_operations_work() {
    let mut m = Mounted::new(
        "posix",
        Options {
            record_ops: true,
            ..Options::default()
        },
    );
    let p = m.p("f");

    // O_CREAT|O_EXCL.
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(&p)
        .unwrap();
    assert_eq!(
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::AlreadyExists
    );
    f.write_all(b"hello").unwrap();
    drop(f);
    let md = fs::metadata(&p).unwrap();
    assert_eq!(md.len(), 5);
    assert_eq!(md.permissions().mode() & 0o7777, 0o640);
    assert!(md.is_file());

    // O_APPEND from two handles.
    let mut a1 = OpenOptions::new().append(true).open(&p).unwrap();
    let mut a2 = OpenOptions::new().append(true).open(&p).unwrap();
    a1.write_all(b" one").unwrap();
    a2.write_all(b" two").unwrap();
    assert_eq!(read(&p).unwrap(), b"hello one two");

    // Read/write at offsets, seek past the end leaves a hole of zeros.
    let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.seek(SeekFrom::Start(20)).unwrap();
    f.write_all(b"!").unwrap();
    let mut all = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut all).unwrap();
    assert_eq!(&all[..13], b"hello one two");
    assert_eq!(&all[13..20], &[0u8; 7]);
    assert_eq!(all[20], b'!');

    // chmod, utimes, truncate through setattr.
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
    assert_eq!(fs::metadata(&p).unwrap().modified().unwrap(), t);
    f.set_len(3).unwrap();
    assert_eq!(read(&p).unwrap(), b"hel");

    // fallocate extends with zeros.
    nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, 8192).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 8192);
    drop(f);

    // Directories: listing, rmdir of a non-empty one fails, then works.
    fs::create_dir(m.p("d")).unwrap();
    for i in 0..300 {
        fs::write(m.p(&format!("d/file-{i:03}")), b"x").unwrap();
    }
    let listed = names(&m.p("d"));
    assert_eq!(listed.len(), 300);
    assert_eq!(
        fs::remove_dir(m.p("d")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    // Remove while iterating: the listing stays consistent.
    for e in fs::read_dir(m.p("d")).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
    fs::remove_dir(m.p("d")).unwrap();
    assert_eq!(names(&m.dir), ["f"]);

    // statvfs and access.
    let st = nix::sys::statvfs::statvfs(&m.dir).unwrap();
    assert!(st.blocks() > 0 && st.blocks_available() > 0);
    nix::unistd::access(
        &p,
        nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK,
    )
    .unwrap();

    // An unlinked file stays readable through an open handle.
    let mut h = fs::File::open(&p).unwrap();
    fs::remove_file(&p).unwrap();
    let mut buf = [0u8; 3];
    h.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hel");
    drop(h);

    let log = m.fs().take_op_log();
    assert!(log.iter().any(|l| l == "create /f"), "{log:?}");
    assert!(log.iter().any(|l| l == "unlink /f"), "{log:?}");
}

#[test]
fn o_direct_and_locks_across_processes() {
    let mut m = Mounted::new("direct", Options::default());
    let p = m.p("d");
    fs::write(&p, vec![0u8; 8192]).unwrap();

    // O_DIRECT needs an aligned buffer; find a 4 KiB-aligned window in a larger one.
    let mut buf = vec![0u8; 3 * 4096];
    let skew = (4096 - buf.as_ptr() as usize % 4096) % 4096;
    let window = &mut buf[skew..skew + 4096];
    window.fill(b'D');
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&p);
    match f {
        Ok(f) => {
            use std::os::unix::fs::FileExt;
            f.write_all_at(window, 4096).unwrap();
            window.fill(0);
            f.read_exact_at(window, 4096).unwrap();
            assert!(window.iter().all(|&b| b == b'D'));
            f.sync_all().unwrap();
            eprintln!("O_DIRECT open, aligned write and read work");
        }
        Err(e) => panic!("O_DIRECT open failed: {e}"),
    }
    sync_dir(&m.dir);
    m.cut();
    let c = read(&p).unwrap();
    assert!(c[4096..].iter().all(|&b| b == b'D') && c[..4096].iter().all(|&b| b == 0));

    // An flock(2) held here conflicts with another process's (the kernel does the locking).
    let held = nix::fcntl::Flock::lock(
        fs::File::open(&p).unwrap(),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .unwrap();
    let other = std::process::Command::new("flock")
        .arg("-n")
        .arg(&p)
        .arg("true")
        .status();
    if let Ok(status) = other {
        assert!(!status.success(), "second flock should fail while held");
        drop(held);
        let status = std::process::Command::new("flock")
            .arg("-n")
            .arg(&p)
            .arg("true")
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// A test process that dies without unmounting leaves a dead mount (`ENOTCONN`); the next
/// mount at the same place must clear it.
#[test]
fn dead_mount_of_a_crashed_process_is_replaced() {
    if let Ok(dir) = std::env::var("LAZYFS_MOUNT_AND_DIE") {
        let fs = super::LazyFs::mount(std::path::Path::new(&dir), Options::default()).unwrap();
        fs::write(std::path::Path::new(&dir).join("x"), b"x").unwrap();
        std::mem::forget(fs);
        std::process::abort();
    }
    let dir = std::path::PathBuf::from(format!("/tmp/lazyfs-test-{}-dead", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lazyfs::fuse_tests::dead_mount_of_a_crashed_process_is_replaced",
            "--test-threads",
            "1",
        ])
        .env("LAZYFS_MOUNT_AND_DIE", &dir)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    assert_eq!(
        fs::metadata(&dir).unwrap_err().raw_os_error(),
        Some(libc::ENOTCONN)
    );
    let fs = super::LazyFs::mount(&dir, Options::default()).unwrap();
    assert!(names(&dir).is_empty());
    fs.unmount().unwrap();
    fs::remove_dir(&dir).unwrap();
}

// Helpers: a fresh mountpoint under /tmp per test, and small fs shorthands.

/// A mounted lazyfs on a fresh directory, removed again (after unmount) when dropped.
pub struct Mounted {
    pub fs: Option<LazyFs>,
    pub dir: PathBuf,
}

impl Mounted {
    pub fn new(test: &str, opts: Options) -> Mounted {
        let dir = PathBuf::from(format!("/tmp/lazyfs-test-{}-{test}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let fs = LazyFs::mount(&dir, opts).unwrap_or_else(|e| {
            panic!("mount at {} (needs root and /dev/fuse): {e}", dir.display())
        });
        Mounted { fs: Some(fs), dir }
    }

    pub fn fs(&mut self) -> &mut LazyFs {
        self.fs.as_mut().unwrap()
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Power cut, printing what it dropped and how long it took.
    pub fn cut(&mut self) -> CutReport {
        let r = self.fs().power_cut().expect("power cut");
        eprintln!(
            "cut: unmount {:?}, remount {:?}, dropped {} bytes, {} unsynced written, {} inodes removed",
            r.unmount_time, r.remount_time, r.dropped_bytes, r.unsynced_write_bytes, r.inodes_removed
        );
        r
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(fs) = self.fs.take() {
            if let Err(e) = fs.unmount() {
                eprintln!("unmount {}: {e}", self.dir.display());
            }
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// fsync of a directory, the way programs do it: open it and fsync the fd.
pub fn sync_dir(dir: &Path) {
    fs::File::open(dir).unwrap().sync_all().unwrap();
}

/// Writes a whole file and fsyncs it (not its directory).
pub fn write_synced(path: &Path, data: &[u8]) {
    use std::io::Write;
    let mut f = fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

pub fn read(path: &Path) -> Option<Vec<u8>> {
    fs::read(path).ok()
}

pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

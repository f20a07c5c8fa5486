//! Making directory entries durable. A file's fsync makes its content durable, not its name:
//! under the strict POSIX model a new file or directory survives a power cut only once the
//! directory holding it is fsync'd. SQLite does that for its own journal and WAL files; for
//! the directories irisd creates for durable state (the spool's folder, which may not exist
//! yet at the first start) it is done here.

use std::io;
use std::path::Path;

/// Fsyncs the directory `dir`, so the entries created, renamed or removed in it are durable.
pub fn dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Like `std::fs::create_dir_all`, but every directory it creates is made durable: each new
/// directory's parent is fsync'd after the directory is made, from the outermost down.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    if path.as_os_str().is_empty() || path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        create_dir_all(parent)?;
    }
    match std::fs::create_dir(path) {
        Ok(()) => {}
        // Another process (or thread) made it meanwhile: it made it durable too, or will.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    dir(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_nested_directories_and_accepts_existing_ones() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all(&deep).unwrap();
        let file = t.path().join("a/f");
        std::fs::write(&file, b"x").unwrap();
        assert!(
            create_dir_all(&file.join("g")).is_err(),
            "a file is in the way"
        );
    }
}

//! Crash-safe file work for the store: a file or a whole certificate
//! directory either appears complete or not at all.
//!
//! The recipe is the classic one (write a temporary, fsync it, rename it
//! over the target, fsync the directory so the rename itself is durable);
//! see `delivery::maildir` for the same idea applied to messages.
//! Temporary names start with `.` so readers skip them.

use super::CertError;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Private keys and the store's directories are readable by the owner only.
pub(crate) const PRIVATE_FILE: u32 = 0o600;
pub(crate) const PUBLIC_FILE: u32 = 0o644;
pub(crate) const PRIVATE_DIR: u32 = 0o700;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A hidden name, unique in this process and across processes.
pub(crate) fn temp_name(what: &str) -> String {
    format!(
        ".tmp-{what}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates `dir` (and parents) and sets it to owner-only access.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), CertError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
        .map_err(CertError::io("create the directory", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR))
        .map_err(CertError::io("set permissions 0700 on", dir))
}

/// Writes a new file, sets its mode explicitly (umask cannot loosen it
/// then) and fsyncs it. Fails if the file exists.
pub(crate) fn write_new_synced(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result.map_err(CertError::io("write", path))
}

/// fsync a directory so renames and creations inside it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), CertError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(CertError::io("fsync the directory", dir))
}

/// Atomically replaces (or creates) `path` with `bytes`.
pub(crate) fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let dir = parent(path);
    let tmp = dir.join(temp_name("file"));
    write_new_synced(&tmp, bytes, mode)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(CertError::io("replace", path)(e));
    }
    sync_dir(dir)
}

/// Builds a directory of files under a hidden name in `parent_dir`, then
/// renames it to `final_dir` in one step. Every file is fsynced first.
pub(crate) fn install_dir(
    parent_dir: &Path,
    final_dir: &Path,
    files: &[(&str, &[u8], u32)],
) -> Result<(), CertError> {
    let tmp = parent_dir.join(temp_name("dir"));
    let result = (|| {
        create_private_dir(&tmp)?;
        for (name, bytes, mode) in files {
            write_new_synced(&tmp.join(name), bytes, *mode)?;
        }
        sync_dir(&tmp)?;
        fs::rename(&tmp, final_dir).map_err(CertError::io("move into place", final_dir))?;
        sync_dir(parent_dir)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// Removes a directory so that a crash leaves it either present or gone:
/// it is renamed to a hidden name first, then deleted.
pub(crate) fn remove_dir(dir: &Path) -> Result<(), CertError> {
    let parent_dir = parent(dir);
    let graveyard = parent_dir.join(temp_name("removed"));
    fs::rename(dir, &graveyard).map_err(CertError::io("remove", dir))?;
    sync_dir(parent_dir)?;
    fs::remove_dir_all(&graveyard).map_err(CertError::io("delete", &graveyard))
}

/// Deletes leftovers of interrupted writes older than `min_age`, so a
/// writer still at work in another process is never disturbed.
pub(crate) fn sweep_temporaries(dir: &Path, min_age: std::time::Duration) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(".tmp-") {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= min_age);
        if old {
            let path = entry.path();
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
}

/// Reads a whole file that must not exceed `limit` bytes.
pub(crate) fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, CertError> {
    let read_err = |source| CertError::ReadInput {
        path: path.to_path_buf(),
        source,
    };
    let f = File::open(path).map_err(read_err)?;
    let size = f.metadata().map_err(read_err)?.len();
    if size > limit {
        return Err(CertError::InputTooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    let mut buf = Vec::with_capacity(size as usize);
    f.take(limit + 1).read_to_end(&mut buf).map_err(read_err)?;
    if buf.len() as u64 > limit {
        return Err(CertError::InputTooLarge {
            path: path.to_path_buf(),
            size: buf.len() as u64,
            limit,
        });
    }
    Ok(buf)
}

/// Exclusive lock on `<certs>/.lock`, held while the store changes.
pub(crate) struct StoreLock {
    _file: File,
}

impl StoreLock {
    pub(crate) fn acquire(certs_dir: &Path) -> Result<StoreLock, CertError> {
        let path = certs_dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(PRIVATE_FILE)
            .open(&path)
            .map_err(CertError::io("open the lock file", &path))?;
        file.lock().map_err(CertError::io("lock", &path))?;
        Ok(StoreLock { _file: file })
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

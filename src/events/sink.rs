//! The JSON lines sink: one event per line in `events.jsonl`, rotated by
//! size (`events.jsonl` -> `events.1.jsonl` -> ... -> `events.N.jsonl`,
//! the oldest deleted), so a log shipper can tail the file and disk use
//! is bounded by `max_file_size * (keep + 1)`.
//!
//! A write error is reported once through `tracing` (not as an event, which
//! would recurse) and the sink keeps trying: losing the file must never
//! stop the server.

use super::Emitted;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where and how much.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonlConfig {
    pub path: PathBuf,
    pub max_file_size: u64,
    /// Rotated files kept besides the live one.
    pub keep: usize,
}

struct Open {
    cfg: JsonlConfig,
    file: Option<File>,
    size: u64,
    failed: bool,
}

static SINK: Mutex<Option<Open>> = Mutex::new(None);

/// Sets (or, with `None`, turns off) the file sink.
pub fn configure(cfg: Option<JsonlConfig>) {
    let mut guard = SINK.lock().unwrap_or_else(|e| e.into_inner());
    if guard.as_ref().map(|o| &o.cfg) == cfg.as_ref() {
        return;
    }
    *guard = cfg.map(|cfg| Open {
        cfg,
        file: None,
        size: 0,
        failed: false,
    });
}

/// The rotated name `events.N.jsonl` for `events.jsonl`.
pub fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "events".into());
    let ext = path
        .extension()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "jsonl".into());
    path.with_file_name(format!("{stem}.{n}.{ext}"))
}

fn rotate(cfg: &JsonlConfig) -> std::io::Result<()> {
    if cfg.keep == 0 {
        return std::fs::remove_file(&cfg.path);
    }
    let _ = std::fs::remove_file(rotated_path(&cfg.path, cfg.keep));
    for n in (1..cfg.keep).rev() {
        let from = rotated_path(&cfg.path, n);
        if from.exists() {
            std::fs::rename(&from, rotated_path(&cfg.path, n + 1))?;
        }
    }
    std::fs::rename(&cfg.path, rotated_path(&cfg.path, 1))
}

fn open(cfg: &JsonlConfig) -> std::io::Result<(File, u64)> {
    if let Some(dir) = cfg.path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cfg.path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

/// Appends one event (called by `emit`).
pub(super) fn write(record: &Emitted) {
    let mut guard = SINK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(sink) = guard.as_mut() else {
        return;
    };
    let Ok(mut line) = serde_json::to_vec(record) else {
        return;
    };
    line.push(b'\n');
    let result = (|| -> std::io::Result<()> {
        if sink.file.is_some() && sink.size + line.len() as u64 > sink.cfg.max_file_size {
            sink.file = None;
            rotate(&sink.cfg)?;
        }
        if sink.file.is_none() {
            let (f, size) = open(&sink.cfg)?;
            sink.file = Some(f);
            sink.size = size;
        }
        if let Some(f) = sink.file.as_mut() {
            f.write_all(&line)?;
            sink.size += line.len() as u64;
        }
        Ok(())
    })();
    match result {
        Ok(()) => sink.failed = false,
        Err(e) => {
            sink.file = None;
            if !sink.failed {
                sink.failed = true;
                tracing::error!(path = %sink.cfg.path.display(), error = %e, "cannot write the events JSON lines file; events still go to stderr and /events");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names() {
        assert_eq!(
            rotated_path(Path::new("/v/log/events.jsonl"), 2),
            PathBuf::from("/v/log/events.2.jsonl")
        );
    }
}

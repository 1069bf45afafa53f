//! Maildir delivery (<https://cr.yp.to/proto/maildir.html>), made durable.
//!
//! `tmp/<unique>` is written and fsynced, renamed into `new/`, and `new/`
//! is fsynced, so the message's name survives a crash too. Only then does
//! the delivery count, and only then may the queue forget the message.
//!
//! The delivered file is `Return-Path: <sender>` (RFC 5321 §4.4: the final
//! delivery MTA adds it) followed by the queued bytes unchanged.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// One Maildir: `<root>/{tmp,new,cur}`.
#[derive(Clone, Debug)]
pub struct Maildir {
    root: PathBuf,
}

impl Maildir {
    /// Creates the three subdirectories if needed.
    pub fn open(root: &Path) -> io::Result<Maildir> {
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(root.join(sub))?;
        }
        Ok(Maildir {
            root: root.to_path_buf(),
        })
    }

    pub fn new_dir(&self) -> PathBuf {
        self.root.join("new")
    }

    /// Delivers one message durably; returns the file's final path.
    /// Blocking: run it on a blocking thread.
    pub fn deliver(
        &self,
        return_path: &str,
        hostname: &str,
        message: &[u8],
    ) -> io::Result<PathBuf> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let header = format!("Return-Path: <{return_path}>\r\n");
        let size = header.len() + message.len();
        let name = format!(
            "{}.M{}P{}Q{}.{},S={}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            hostname.replace(['/', ':'], "_"),
            size
        );
        let tmp = self.root.join("tmp").join(&name);
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(header.as_bytes())?;
            f.write_all(message)?;
            f.sync_all()?;
            drop(f);
            let dest = self.root.join("new").join(&name);
            fs::rename(&tmp, &dest)?;
            File::open(self.root.join("new"))?.sync_all()?;
            Ok(dest)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_into_new_with_return_path() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(&dir.path().join("box")).unwrap();
        let p = md
            .deliver("a@b.test", "mx.test", b"Subject: hi\r\n\r\nbody\r\n")
            .unwrap();
        assert!(p.starts_with(md.new_dir()));
        assert_eq!(
            fs::read(&p).unwrap(),
            b"Return-Path: <a@b.test>\r\nSubject: hi\r\n\r\nbody\r\n"
        );
        assert_eq!(fs::read_dir(dir.path().join("box/tmp")).unwrap().count(), 0);
    }
}

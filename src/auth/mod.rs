//! SMTP AUTH users: a file of argon2id password hashes.
//!
//! The file (`auth.users_file`, default `<data_dir>/users`, mode 0600) has
//! one user per line, `name:$argon2id$v=19$m=...`, and `#` comments. It is
//! written atomically (temp file, fsync, rename). Verification runs on a
//! blocking thread: argon2 is deliberately slow.
//!
//! Also here: the SASL PLAIN (RFC 4616) and LOGIN decoders and a small
//! base64 codec (RFC 4648), which is all SMTP AUTH needs.

pub mod cli;
pub mod lockout;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("cannot read the users file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the users file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "user name `{0}` is not allowed: use 1 to 64 characters, no ':', whitespace or control characters"
    )]
    BadName(String),
    #[error("user `{0}` does not exist (see `gatehouse user list`)")]
    NoSuchUser(String),
    #[error("the password is empty")]
    EmptyPassword,
    #[error("hashing the password failed: {0}")]
    Hash(String),
}

/// The user database, loaded in memory.
#[derive(Clone, Debug, Default)]
pub struct UserDb {
    path: PathBuf,
    users: BTreeMap<String, String>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= 64
        && !name
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control())
}

impl UserDb {
    /// Loads the file; a missing file is an empty database.
    pub fn load(path: &Path) -> Result<UserDb, UserError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(UserError::Read {
                    path: path.into(),
                    source,
                });
            }
        };
        let mut users = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = |message: &str| UserError::Syntax {
                path: path.into(),
                line: i + 1,
                message: message.into(),
            };
            let (name, hash) = line
                .split_once(':')
                .ok_or_else(|| syntax("expected name:$argon2id$..."))?;
            if !valid_name(name) {
                return Err(syntax("invalid user name"));
            }
            PasswordHash::new(hash).map_err(|e| syntax(&format!("invalid password hash: {e}")))?;
            users.insert(name.to_string(), hash.to_string());
        }
        Ok(UserDb {
            path: path.into(),
            users,
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// Adds or replaces a user (argon2id, random salt) and saves the file.
    pub fn set_password(&mut self, name: &str, password: &str) -> Result<(), UserError> {
        if !valid_name(name) {
            return Err(UserError::BadName(name.into()));
        }
        if password.is_empty() {
            return Err(UserError::EmptyPassword);
        }
        let mut salt_bytes = [0u8; 16];
        aws_lc_rs_random(&mut salt_bytes);
        let salt =
            SaltString::encode_b64(&salt_bytes).map_err(|e| UserError::Hash(e.to_string()))?;
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| UserError::Hash(e.to_string()))?;
        self.users.insert(name.into(), hash.to_string());
        self.save()
    }

    pub fn remove(&mut self, name: &str) -> Result<(), UserError> {
        if self.users.remove(name).is_none() {
            return Err(UserError::NoSuchUser(name.into()));
        }
        self.save()
    }

    /// Checks a password. Unknown users cost the same as known ones (a
    /// dummy verification), so timing does not reveal which names exist.
    pub fn verify(&self, name: &str, password: &str) -> bool {
        const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Q0vW0mnIHOu6ZoqXgNn0cUDDcG3oW4BBzrE7B4Bhd2k";
        let (hash, known) = match self.users.get(name) {
            Some(h) => (h.as_str(), true),
            None => (DUMMY, false),
        };
        let ok = PasswordHash::new(hash).is_ok_and(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        });
        ok && known
    }

    fn save(&self) -> Result<(), UserError> {
        let err = |source| UserError::Write {
            path: self.path.clone(),
            source,
        };
        let mut text = String::from(
            "# Gatehouse SMTP AUTH users: name:argon2id-hash. Manage with `gatehouse user`.\n",
        );
        for (n, h) in &self.users {
            text.push_str(&format!("{n}:{h}\n"));
        }
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(err)?;
        fs::rename(&tmp, &self.path).map_err(err)?;
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
        Ok(())
    }
}

fn aws_lc_rs_random(buf: &mut [u8]) {
    // The process-wide provider's CSPRNG (aws-lc-rs).
    let _ = rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(buf);
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64; `None` on any malformed input.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let bytes = s.as_bytes();
    for (ci, chunk) in bytes.chunks(4).enumerate() {
        let last = ci == bytes.len() / 4 - 1;
        let mut n = 0u32;
        let mut pad = 0;
        for (i, &c) in chunk.iter().enumerate() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' if last && i >= 2 => {
                    pad += 1;
                    0
                }
                _ => return None,
            };
            if pad > 0 && c != b'=' {
                return None;
            }
            n = (n << 6) | u32::from(v);
        }
        let b = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&b[..3 - pad]);
    }
    Some(out)
}

/// SASL PLAIN message (RFC 4616): `authzid NUL authcid NUL passwd`.
/// Returns (authcid, password). An authzid other than empty or the
/// authcid itself is refused (no proxy authorization).
pub fn decode_plain(b64: &str) -> Option<(String, String)> {
    let raw = base64_decode(b64)?;
    let mut parts = raw.split(|b| *b == 0);
    let authz = parts.next()?;
    let authc = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let pass = String::from_utf8(parts.next()?.to_vec()).ok()?;
    if parts.next().is_some()
        || authc.is_empty()
        || (!authz.is_empty() && authz != authc.as_bytes())
    {
        return None;
    }
    Some((authc, pass))
}

/// The user database as the server uses it: reloaded when the file's
/// modification time changes, so `gatehouse user add` takes effect for the
/// next AUTH without a restart.
pub struct LiveUsers {
    path: PathBuf,
    cache: std::sync::Mutex<(Option<std::time::SystemTime>, std::sync::Arc<UserDb>)>,
}

impl LiveUsers {
    pub fn open(path: &Path) -> Result<LiveUsers, UserError> {
        let db = UserDb::load(path)?;
        let mtime = fs::metadata(path).and_then(|m| m.modified()).ok();
        Ok(LiveUsers {
            path: path.into(),
            cache: std::sync::Mutex::new((mtime, std::sync::Arc::new(db))),
        })
    }

    /// The current database (blocking: stats the file, may re-read it).
    pub fn current(&self) -> std::sync::Arc<UserDb> {
        let mtime = fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.0 != mtime {
            match UserDb::load(&self.path) {
                Ok(db) => *cache = (mtime, std::sync::Arc::new(db)),
                Err(e) => {
                    tracing::error!(error = %e, "users file changed but cannot be loaded; keeping the previous users")
                }
            }
        }
        cache.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            "\0user\0pass",
        ] {
            assert_eq!(
                base64_decode(&base64_encode(s.as_bytes())).unwrap(),
                s.as_bytes()
            );
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert!(base64_decode("Zm9v!mFy").is_none());
        assert!(base64_decode("Zg=a").is_none());
    }

    #[test]
    fn plain_decoding() {
        assert_eq!(
            decode_plain(&base64_encode(b"\0alice\0secret")),
            Some(("alice".into(), "secret".into()))
        );
        assert_eq!(
            decode_plain(&base64_encode(b"alice\0alice\0secret")),
            Some(("alice".into(), "secret".into()))
        );
        assert_eq!(decode_plain(&base64_encode(b"admin\0alice\0secret")), None);
        assert_eq!(decode_plain(&base64_encode(b"alice secret")), None);
    }

    #[test]
    fn users_file_round_trip_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let mut db = UserDb::load(&path).unwrap();
        db.set_password("alice@example.test", "correct horse")
            .unwrap();
        let db = UserDb::load(&path).unwrap();
        assert!(db.verify("alice@example.test", "correct horse"));
        assert!(!db.verify("alice@example.test", "wrong"));
        assert!(!db.verify("bob", "correct horse"));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn malformed_users_file_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        fs::write(&path, "# c\nalice:not-a-hash\n").unwrap();
        let e = UserDb::load(&path).unwrap_err().to_string();
        assert!(e.contains(":2:"), "{e}");
    }
}

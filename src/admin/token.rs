//! The admin API's bearer token: 32 random bytes, hex, in a file only
//! the server's user can read (0600), created at first start.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "cannot create the admin token file {path}: {source}\n  = hint: check the permissions of its directory or set [admin] token_file"
    )]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the admin token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the admin token file {path} is readable by other users (mode {mode:o})\n  = hint: chmod 600 {path}"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "the admin token file {path} holds no usable token\n  = hint: delete it; a new one is created at the next start"
    )]
    Empty { path: PathBuf },
    #[error("no random numbers for the admin token")]
    Random,
}

/// Loads the token, creating the file when it does not exist. Returns
/// the token and whether it was created now.
pub fn load_or_create(path: &Path) -> Result<(String, bool), TokenError> {
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(TokenError::TooOpen {
                    path: path.into(),
                    mode,
                });
            }
            read(path).map(|t| (t, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            rustls::crypto::aws_lc_rs::default_provider()
                .secure_random
                .fill(&mut bytes)
                .map_err(|_| TokenError::Random)?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let create = |source| TokenError::Create {
                path: path.into(),
                source,
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(create)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(create)?;
            f.write_all(token.as_bytes())
                .and_then(|_| f.write_all(b"\n"))
                .and_then(|_| f.sync_all())
                .map_err(create)?;
            Ok((token, true))
        }
        Err(source) => Err(TokenError::Read {
            path: path.into(),
            source,
        }),
    }
}

/// Reads an existing token file (the CLI does this to call the API).
pub fn read(path: &Path) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.into(),
        source,
    })?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(TokenError::Empty { path: path.into() });
    }
    Ok(token.to_string())
}

/// Compares without an early exit, so response time does not reveal how
/// much of a guessed token matched.
pub fn matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= (x ^ b.get(i).copied().unwrap_or(0)) as usize;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_0600_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("admin.token");
        let (t1, created) = load_or_create(&p).unwrap();
        assert!(created);
        assert_eq!(t1.len(), 64);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (t2, created) = load_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!(t1, t2);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create(&p),
            Err(TokenError::TooOpen { .. })
        ));
    }

    #[test]
    fn comparison() {
        assert!(matches("abcdef", "abcdef"));
        assert!(!matches("abcdef", "abcdeg"));
        assert!(!matches("abcdef", "abcde"));
        assert!(!matches("abcdef", "abcdefg"));
        assert!(!matches("abcdef", ""));
    }
}

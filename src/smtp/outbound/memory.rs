//! Per-domain memory of the best TLS protection seen (chasquid's
//! `domaininfo`): once a domain's mail went out over verified TLS, a later
//! plaintext or unverified session to it is a downgrade, which is reported
//! (Warning event, counter) and, with `enforce_tls_memory`, refused.
//!
//! Stored as JSON in `<data_dir>/tls-memory.json`, replaced atomically
//! (write temp, fsync, rename) whenever a domain's level rises. Losing the
//! file only forgets; it never blocks mail that the connector's level
//! allows.

use super::tls::Protection;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct TlsMemory {
    path: Option<PathBuf>,
    best: Mutex<BTreeMap<String, Protection>>,
    downgrades: AtomicU64,
}

impl TlsMemory {
    /// Loads the file (a missing or unreadable one starts empty).
    pub fn open(path: Option<PathBuf>) -> TlsMemory {
        let mut best = BTreeMap::new();
        if let Some(p) = &path
            && let Ok(text) = std::fs::read_to_string(p)
            && let Ok(map) = serde_json::from_str::<BTreeMap<String, String>>(&text)
        {
            for (d, l) in map {
                if let Some(l) = Protection::parse(&l) {
                    best.insert(d, l);
                }
            }
        }
        TlsMemory {
            path,
            best: Mutex::new(best),
            downgrades: AtomicU64::new(0),
        }
    }

    pub fn best(&self, domain: &str) -> Option<Protection> {
        self.best
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&domain.to_ascii_lowercase())
            .copied()
    }

    /// Records a session's protection. Returns the best level seen before
    /// when this one is lower (a downgrade).
    pub fn record(&self, domain: &str, seen: Protection) -> Option<Protection> {
        let domain = domain.to_ascii_lowercase();
        let mut map = self.best.lock().unwrap_or_else(|e| e.into_inner());
        let prev = map.get(&domain).copied();
        match prev {
            Some(p) if p > seen => {
                self.downgrades.fetch_add(1, Ordering::Relaxed);
                Some(p)
            }
            Some(p) if p == seen => None,
            _ => {
                map.insert(domain, seen);
                self.save(&map);
                None
            }
        }
    }

    /// Downgrades seen since start.
    pub fn downgrades(&self) -> u64 {
        self.downgrades.load(Ordering::Relaxed)
    }

    fn save(&self, map: &BTreeMap<String, Protection>) {
        let Some(path) = &self.path else { return };
        let plain: BTreeMap<&str, &str> =
            map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let Ok(text) = serde_json::to_vec_pretty(&plain) else {
            return;
        };
        let tmp = path.with_extension("json.tmp");
        let result = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot save the TLS memory; it stays in memory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downgrade_is_reported_and_memory_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls-memory.json");
        let m = TlsMemory::open(Some(path.clone()));
        assert_eq!(m.record("a.test", Protection::Verified), None);
        assert_eq!(
            m.record("a.test", Protection::Plaintext),
            Some(Protection::Verified)
        );
        assert_eq!(m.downgrades(), 1);
        let m2 = TlsMemory::open(Some(path));
        assert_eq!(m2.best("A.test"), Some(Protection::Verified));
    }
}

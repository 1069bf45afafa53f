//! `CertStore`: the certificate directories under `<data_dir>/certs/` and
//! every operation on them (see the module documentation in `mod.rs` for
//! the layout and the crash-safety rules).

use super::fsio::{self, PRIVATE_FILE, PUBLIC_FILE, StoreLock};
use super::generate;
use super::inspect::{self, CertFacts};
use super::pkcs12;
use super::{CertError, CertInfo, KeyKind, Services, Thumbprint};
use rustls::crypto::aws_lc_rs::sign::any_supported_type;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const CHAIN_FILE: &str = "chain.pem";
const KEY_FILE: &str = "key.pem";
const META_FILE: &str = "meta.json";
const PENDING_DIR: &str = "pending";
const CSR_FILE: &str = "request.csr";
/// Certificate files, PKCS#12 bundles and keys are a few KiB; anything
/// bigger is the wrong file.
const MAX_FILE: u64 = 1 << 20;
/// Longest issuer chain followed on import.
const MAX_CHAIN: usize = 8;

/// The certificate store rooted at `<data_dir>/certs/`.
#[derive(Clone, Debug)]
pub struct CertStore {
    dir: PathBuf,
}

/// What `CertStore::load` found: certificates ready for rustls, and every
/// problem the TLS layer should report.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub usable: Vec<LoadedCert>,
    pub problems: Vec<LoadProblem>,
}

/// A certificate with its chain and signing key, ready for a resolver.
#[derive(Clone, Debug)]
pub struct LoadedCert {
    pub info: CertInfo,
    pub certified_key: Arc<CertifiedKey>,
}

/// A certificate directory that cannot be used as it is, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadProblem {
    /// The SHA-1 thumbprint (the directory name when the certificate
    /// itself cannot be read).
    pub thumbprint: String,
    pub reason: String,
}

/// What `gatehouse cert show` prints beyond `CertInfo`.
#[derive(Clone, Debug)]
pub struct CertDetails {
    pub info: CertInfo,
    /// Subjects of the intermediates in chain.pem, leaf's issuer first.
    pub chain: Vec<String>,
    pub imported_at: Option<String>,
    pub dir: PathBuf,
}

/// A request made by `CertStore::request` and not yet completed.
#[derive(Clone, Debug)]
pub struct PendingRequest {
    pub name: String,
    pub csr_path: PathBuf,
}

/// `meta.json`: what the certificate itself does not say.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Meta {
    /// `smtp`, `https`, `smtp,https` or `none`.
    services: String,
    #[serde(rename = "default")]
    is_default: bool,
    #[serde(default)]
    friendly_name: Option<String>,
    /// ISO 8601 UTC.
    #[serde(default)]
    imported_at: Option<String>,
}

impl Meta {
    fn new(services: Services, is_default: bool, friendly_name: Option<String>) -> Meta {
        Meta {
            services: services.to_string(),
            is_default,
            friendly_name,
            imported_at: Some(crate::timefmt::iso8601_millis(SystemTime::now())),
        }
    }
}

/// One certificate directory as read from disk.
struct Entry {
    dir: PathBuf,
    dir_name: String,
    facts: CertFacts,
    chain: Vec<CertificateDer<'static>>,
    services: Services,
    is_default: bool,
    meta: Option<Meta>,
    meta_mtime: Option<SystemTime>,
    meta_problem: Option<String>,
}

impl Entry {
    fn info(&self) -> CertInfo {
        let f = &self.facts;
        CertInfo {
            sha1: f.sha1.clone(),
            sha256: f.sha256.clone(),
            subject: f.subject.clone(),
            sans: f.sans.clone(),
            issuer: f.issuer.clone(),
            not_before: f.not_before,
            not_after: f.not_after,
            key_type: f.key_type.clone(),
            self_signed: f.self_signed,
            services: self.services,
            is_default: self.is_default,
            friendly_name: self.meta.as_ref().and_then(|m| m.friendly_name.clone()),
        }
    }

    fn meta_or_default(&self) -> Meta {
        self.meta.clone().unwrap_or(Meta {
            services: self.services.to_string(),
            is_default: self.is_default,
            friendly_name: None,
            imported_at: None,
        })
    }

    /// Usable for SMTP right now: enabled and within its validity.
    fn serves_smtp(&self, now: SystemTime) -> bool {
        self.services.smtp && self.facts.not_before <= now && now < self.facts.not_after
    }
}

/// Every certificate directory, read.
struct Scan {
    entries: Vec<Entry>,
    problems: Vec<LoadProblem>,
    /// Certificate directories present, readable or not.
    dirs: usize,
}

/// Material from an import file before it becomes a store entry.
struct Material {
    certs: Vec<Vec<u8>>,
    keys: Vec<PrivateKeyDer<'static>>,
    friendly_name: Option<String>,
}

impl CertStore {
    /// Opens (creating, mode 0700) `<data_dir>/certs/` and clears out
    /// leftovers of interrupted writes older than an hour.
    pub fn open(data_dir: &Path) -> Result<CertStore, CertError> {
        let dir = data_dir.join("certs");
        fsio::create_private_dir(&dir)?;
        let stale = Duration::from_secs(3600);
        fsio::sweep_temporaries(&dir, stale);
        fsio::sweep_temporaries(&dir.join(PENDING_DIR), stale);
        Ok(CertStore { dir })
    }

    /// The `certs/` directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// First start: when the store holds no certificate at all, creates the
    /// self-signed default (ECDSA P-256, CA:FALSE, serverAuth, SANs = the
    /// host name and its first label, 365 days), enabled for SMTP and HTTPS and
    /// marked default. Returns its thumbprint when it made one.
    pub fn ensure_default(&self, hostname: &str) -> Result<Option<Thumbprint>, CertError> {
        let _lock = StoreLock::acquire(&self.dir)?;
        if self.scan()?.dirs > 0 {
            return Ok(None);
        }
        let host = hostname.trim().trim_end_matches('.').to_ascii_lowercase();
        let mut names = vec![host.clone()];
        if let Some((first, _)) = host.split_once('.')
            && host.parse::<std::net::IpAddr>().is_err()
        {
            names.push(first.to_string());
        }
        let names = generate::normalize_names(&names)?;
        let made = generate::self_signed(&names, KeyKind::EcdsaP256, SystemTime::now())?;
        // Enabled for smtp and https, as Exchange's default certificate
        // is for SMTP and IIS: the proxy listener needs one too.
        let meta = Meta::new(
            Services {
                smtp: true,
                https: true,
            },
            true,
            Some("Gatehouse default (self-signed)".into()),
        );
        let info = self.install(&[made.cert_der], &made.key_pkcs8, &meta)?;
        Ok(Some(info.thumbprint()))
    }

    /// Every readable certificate, default first, then by subject and
    /// latest expiry. Unreadable directories are left out here and
    /// reported by `load`.
    pub fn list(&self) -> Result<Vec<CertInfo>, CertError> {
        let mut infos: Vec<CertInfo> = self.scan()?.entries.iter().map(Entry::info).collect();
        infos.sort_by(|a, b| {
            b.is_default
                .cmp(&a.is_default)
                .then_with(|| a.subject.cmp(&b.subject))
                .then(b.not_after.cmp(&a.not_after))
        });
        Ok(infos)
    }

    /// One certificate by SHA-1 or SHA-256 thumbprint, any case, or a
    /// unique prefix of at least 8 hex digits. Colons and spaces (as
    /// OpenSSL and the Windows certificate dialog show them) are ignored.
    pub fn get(&self, thumb: &str) -> Result<CertInfo, CertError> {
        Ok(self.resolve(thumb)?.info())
    }

    /// `get` plus the chain, import time and directory.
    pub fn details(&self, thumb: &str) -> Result<CertDetails, CertError> {
        let e = self.resolve(thumb)?;
        let chain = e
            .chain
            .iter()
            .skip(1)
            .map(|c| {
                inspect::facts(c)
                    .map(|f| f.subject)
                    .unwrap_or_else(|r| format!("(unreadable: {r})"))
            })
            .collect();
        Ok(CertDetails {
            info: e.info(),
            chain,
            imported_at: e.meta.as_ref().and_then(|m| m.imported_at.clone()),
            dir: e.dir,
        })
    }

    /// A new self-signed certificate for `names` (the first is the subject
    /// CN), enabled for `services`. It does not become the default.
    pub fn new_self_signed(
        &self,
        names: &[String],
        key: KeyKind,
        services: Services,
    ) -> Result<CertInfo, CertError> {
        let names = generate::normalize_names(names)?;
        let made = generate::self_signed(&names, key, SystemTime::now())?;
        let _lock = StoreLock::acquire(&self.dir)?;
        self.install(
            &[made.cert_der],
            &made.key_pkcs8,
            &Meta::new(services, false, None),
        )
    }

    /// A certificate signing request for `names` with a new key, kept in
    /// `certs/pending/<first name>/` until the signed certificate is
    /// imported. Returns the path of the CSR (PEM).
    pub fn request(&self, names: &[String], key: KeyKind) -> Result<PathBuf, CertError> {
        let names = generate::normalize_names(names)?;
        let req = generate::request(&names, key)?;
        let _lock = StoreLock::acquire(&self.dir)?;
        let pending = self.dir.join(PENDING_DIR);
        fsio::create_private_dir(&pending)?;
        let base = names[0].replace('*', "_wildcard");
        let mut name = base.clone();
        let mut n = 1;
        while pending.join(&name).exists() {
            n += 1;
            name = format!("{base}-{n}");
        }
        let final_dir = pending.join(&name);
        fsio::install_dir(
            &pending,
            &final_dir,
            &[
                (CSR_FILE, req.csr_pem.as_bytes(), PRIVATE_FILE),
                (KEY_FILE, req.key_pem.as_bytes(), PRIVATE_FILE),
            ],
        )?;
        Ok(final_dir.join(CSR_FILE))
    }

    /// Requests made with `request` that no import has completed yet.
    pub fn pending_requests(&self) -> Result<Vec<PendingRequest>, CertError> {
        let mut out: Vec<PendingRequest> = self
            .pending_dirs()?
            .into_iter()
            .map(|(name, dir)| PendingRequest {
                name,
                csr_path: dir.join(CSR_FILE),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Imports a certificate from `file`:
    ///
    /// * PEM with the chain and its private key (PKCS#8, PKCS#1 or SEC1);
    /// * PEM or DER with the certificate alone, when a pending request
    ///   holds its key (the request is then completed and removed);
    /// * PKCS#12, with `password` (none means the empty password).
    ///
    /// The key must match the leaf, each intermediate must have signed the
    /// certificate before it, and the leaf must not be expired or carry a
    /// weak key. The imported certificate is enabled for no service.
    pub fn import(&self, file: &Path, password: Option<&str>) -> Result<CertInfo, CertError> {
        let data = fsio::read_limited(file, MAX_FILE)?;
        let material = read_material(&data, password, file)?;
        let mut facts = Vec::with_capacity(material.certs.len());
        for der in &material.certs {
            facts.push(
                inspect::facts(der).map_err(|reason| CertError::BadCertificate {
                    path: file.to_path_buf(),
                    reason,
                })?,
            );
        }

        let _lock = StoreLock::acquire(&self.dir)?;
        let mut completes: Option<PathBuf> = None;
        let (leaf, key) = if material.keys.is_empty() {
            let found = self.match_pending(&facts)?;
            let Some((leaf, key, dir)) = found else {
                return Err(CertError::NoPrivateKey {
                    path: file.to_path_buf(),
                });
            };
            completes = Some(dir);
            (leaf, key)
        } else {
            let mut pair = None;
            for key in &material.keys {
                let spki = inspect::key_spki(key).map_err(|reason| CertError::UnusableKey {
                    key_file: file.display().to_string(),
                    reason,
                })?;
                if let Some(i) = facts.iter().position(|f| f.spki == spki) {
                    pair = Some((i, key.clone_key()));
                    break;
                }
            }
            pair.ok_or_else(|| CertError::KeyMismatch {
                key_file: file.display().to_string(),
                subject: facts[0].subject.clone(),
            })?
        };

        let chain = build_chain(&material.certs, &facts, leaf, file)?;
        let leaf_facts = &facts[leaf];
        if leaf_facts.weak_key {
            return Err(CertError::WeakKey {
                subject: leaf_facts.subject.clone(),
                key_type: leaf_facts.key_type.clone(),
            });
        }
        if SystemTime::now() >= leaf_facts.not_after {
            return Err(CertError::Expired {
                subject: leaf_facts.subject.clone(),
                date: inspect::date(leaf_facts.not_after),
            });
        }
        let pkcs8 =
            inspect::to_pkcs8(&key, &leaf_facts.spki).map_err(|reason| CertError::UnusableKey {
                key_file: file.display().to_string(),
                reason,
            })?;
        let meta = Meta::new(Services::NONE, false, material.friendly_name);
        let info = self.install(&chain, &pkcs8, &meta)?;
        if let Some(dir) = completes {
            // The certificate is safely stored; a leftover request is
            // harmless, so a failure here is not worth failing the import.
            let _ = fsio::remove_dir(&dir);
        }
        Ok(info)
    }

    /// Writes the certificate, its chain and key to a new PKCS#12 file
    /// (mode 0600). Refuses an empty password and an existing `out`.
    pub fn export_pkcs12(&self, thumb: &str, password: &str, out: &Path) -> Result<(), CertError> {
        if password.is_empty() {
            return Err(CertError::EmptyPassword);
        }
        if out.exists() {
            return Err(CertError::OutputExists {
                path: out.to_path_buf(),
            });
        }
        let e = self.resolve(thumb)?;
        let key_path = e.dir.join(KEY_FILE);
        let key_bytes = fsio::read_limited(&key_path, MAX_FILE)?;
        let key_file = key_path.display().to_string();
        let key =
            PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|err| CertError::UnusableKey {
                key_file: key_file.clone(),
                reason: err.to_string(),
            })?;
        if inspect::key_spki(&key).ok().as_deref() != Some(&e.facts.spki[..]) {
            return Err(CertError::KeyMismatch {
                key_file,
                subject: e.facts.subject.clone(),
            });
        }
        let pkcs8 = inspect::to_pkcs8(&key, &e.facts.spki)
            .map_err(|reason| CertError::UnusableKey { key_file, reason })?;
        let chain: Vec<Vec<u8>> = e.chain.iter().map(|c| c.to_vec()).collect();
        let alias = e
            .meta
            .as_ref()
            .and_then(|m| m.friendly_name.clone())
            .unwrap_or_else(|| e.facts.subject.clone());
        let local_key_id = inspect::sha1_raw(&chain[0]);
        let bytes = pkcs12::write(&chain, &pkcs8, &alias, &local_key_id, password)?;
        fsio::replace_file(out, &bytes, PRIVATE_FILE)
    }

    /// Sets the services a certificate is enabled for (replacing the old
    /// set). Refuses to enable an expired certificate, and to take SMTP
    /// away from the only valid SMTP certificate.
    pub fn enable(&self, thumb: &str, services: Services) -> Result<CertInfo, CertError> {
        let _lock = StoreLock::acquire(&self.dir)?;
        let scan = self.scan()?;
        let target = pick(&scan.entries, thumb)?;
        let now = SystemTime::now();
        if !services.is_none() && now >= target.facts.not_after {
            return Err(CertError::Expired {
                subject: target.facts.subject.clone(),
                date: inspect::date(target.facts.not_after),
            });
        }
        if !services.smtp
            && target.serves_smtp(now)
            && !others_serve_smtp(&scan.entries, target, now)
        {
            return Err(CertError::DisableOnlySmtp {
                thumbprint: target.facts.sha1.clone(),
            });
        }
        let mut meta = target.meta_or_default();
        meta.services = services.to_string();
        write_meta(&target.dir, &meta)?;
        let mut info = target.info();
        info.services = services;
        Ok(info)
    }

    /// Makes one certificate the default (the one used when no name
    /// matches). The new default is marked before the old one is cleared,
    /// so a crash in between leaves two marks, which `list` resolves in
    /// favour of the newer mark, never none.
    pub fn set_default(&self, thumb: &str) -> Result<(), CertError> {
        let _lock = StoreLock::acquire(&self.dir)?;
        let scan = self.scan()?;
        let target = pick(&scan.entries, thumb)?;
        let mut meta = target.meta_or_default();
        meta.is_default = true;
        write_meta(&target.dir, &meta)?;
        for other in &scan.entries {
            let marked = other.meta.as_ref().is_some_and(|m| m.is_default);
            if other.dir != target.dir && marked {
                let mut m = other.meta_or_default();
                m.is_default = false;
                write_meta(&other.dir, &m)?;
            }
        }
        Ok(())
    }

    /// Deletes a certificate. The default certificate and the only valid
    /// certificate enabled for SMTP cannot be removed
    /// (Remove-ExchangeCertificate refuses a certificate in use, too).
    pub fn remove(&self, thumb: &str) -> Result<(), CertError> {
        let _lock = StoreLock::acquire(&self.dir)?;
        let scan = self.scan()?;
        let target = pick(&scan.entries, thumb)?;
        let now = SystemTime::now();
        if target.serves_smtp(now) && !others_serve_smtp(&scan.entries, target, now) {
            return Err(CertError::RemoveOnlySmtp {
                thumbprint: target.facts.sha1.clone(),
            });
        }
        if target.is_default {
            return Err(CertError::RemoveDefault {
                thumbprint: target.facts.sha1.clone(),
            });
        }
        fsio::remove_dir(&target.dir)
    }

    /// The CA certificates the store holds (the intermediates of imported
    /// chains: `import` keeps a chain's CA certificates but not its
    /// self-signed root). Outbound TLS and the proxy's backend verification
    /// add them to their trust anchors, so an internal CA's chain imported
    /// once is trusted everywhere.
    pub fn ca_certificates(&self) -> Vec<CertificateDer<'static>> {
        let mut out: Vec<CertificateDer<'static>> = Vec::new();
        for c in self.load().usable {
            for der in &c.certified_key.cert {
                let is_ca = x509_parser::parse_x509_certificate(der.as_ref())
                    .ok()
                    .and_then(|(_, x)| x.basic_constraints().ok().flatten().map(|b| b.value.ca))
                    .unwrap_or(false);
                if is_ca && !out.contains(der) {
                    out.push(der.clone().into_owned());
                }
            }
        }
        out
    }

    /// Reads every certificate fresh from disk for the TLS layer. A
    /// certificate is usable when its chain parses, its key loads and
    /// matches, and it has not expired (one that is not yet valid is
    /// usable: `select` skips it until its time comes). Everything else
    /// becomes a problem with the reason; nothing here panics.
    pub fn load(&self) -> LoadReport {
        let scan = match self.scan() {
            Ok(s) => s,
            Err(e) => {
                return LoadReport {
                    usable: Vec::new(),
                    problems: vec![LoadProblem {
                        thumbprint: String::new(),
                        reason: e.to_string(),
                    }],
                };
            }
        };
        let mut report = LoadReport {
            usable: Vec::new(),
            problems: scan.problems,
        };
        let now = SystemTime::now();
        for e in scan.entries {
            let problem = |reason: String| LoadProblem {
                thumbprint: e.facts.sha1.clone(),
                reason,
            };
            if let Some(reason) = &e.meta_problem {
                report.problems.push(problem(reason.clone()));
            }
            if now >= e.facts.not_after {
                let err = CertError::Expired {
                    subject: e.facts.subject.clone(),
                    date: inspect::date(e.facts.not_after),
                };
                report.problems.push(problem(err.to_string()));
                continue;
            }
            match load_key(&e) {
                Ok(certified_key) => report.usable.push(LoadedCert {
                    info: e.info(),
                    certified_key: Arc::new(certified_key),
                }),
                Err(reason) => report.problems.push(problem(reason)),
            }
        }
        report
    }

    /// A fingerprint of the certificate directories (names, sizes, mtimes
    /// and inode numbers of their files). It changes whenever a
    /// certificate is added, removed, re-enabled or has a file replaced,
    /// so a poller can call `load` only then.
    pub fn generation(&self) -> u64 {
        let mut h = DefaultHasher::new();
        let mut dirs = cert_dir_names(&self.dir).unwrap_or_default();
        dirs.sort();
        for name in dirs {
            name.hash(&mut h);
            let dir = self.dir.join(&name);
            let mut files: Vec<(String, u64, i64, i64, u64)> = fs::read_dir(&dir)
                .map(|rd| {
                    rd.flatten()
                        .filter_map(|f| {
                            let m = f.metadata().ok()?;
                            Some((
                                f.file_name().to_string_lossy().into_owned(),
                                m.len(),
                                m.mtime(),
                                m.mtime_nsec(),
                                m.ino(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            files.hash(&mut h);
        }
        h.finish()
    }

    // ---- internals ----

    fn resolve(&self, thumb: &str) -> Result<Entry, CertError> {
        let scan = self.scan()?;
        let i = pick_index(&scan.entries, thumb)?;
        let mut entries = scan.entries;
        Ok(entries.swap_remove(i))
    }

    /// Writes a new certificate directory in one atomic step.
    fn install(
        &self,
        chain: &[Vec<u8>],
        key_pkcs8: &[u8],
        meta: &Meta,
    ) -> Result<CertInfo, CertError> {
        let facts = inspect::facts(&chain[0]).map_err(|reason| CertError::Generate {
            what: "read back the new certificate",
            reason,
        })?;
        let exists = cert_dir_names(&self.dir)?
            .iter()
            .any(|n| n.eq_ignore_ascii_case(&facts.sha1));
        if exists {
            return Err(CertError::AlreadyInStore {
                thumbprint: facts.sha1,
            });
        }
        let chain_pem: String = chain
            .iter()
            .map(|der| inspect::pem_encode("CERTIFICATE", der))
            .collect();
        let key_pem = inspect::pem_encode("PRIVATE KEY", key_pkcs8);
        let meta_json = meta_bytes(meta);
        let final_dir = self.dir.join(&facts.sha1);
        fsio::install_dir(
            &self.dir,
            &final_dir,
            &[
                (CHAIN_FILE, chain_pem.as_bytes(), PUBLIC_FILE),
                (KEY_FILE, key_pem.as_bytes(), PRIVATE_FILE),
                (META_FILE, &meta_json, PUBLIC_FILE),
            ],
        )?;
        let services = meta.services.parse().unwrap_or_default();
        Ok(CertInfo {
            sha1: facts.sha1,
            sha256: facts.sha256,
            subject: facts.subject,
            sans: facts.sans,
            issuer: facts.issuer,
            not_before: facts.not_before,
            not_after: facts.not_after,
            key_type: facts.key_type,
            self_signed: facts.self_signed,
            services,
            is_default: meta.is_default,
            friendly_name: meta.friendly_name.clone(),
        })
    }

    fn scan(&self) -> Result<Scan, CertError> {
        let names = cert_dir_names(&self.dir)?;
        let mut scan = Scan {
            entries: Vec::new(),
            problems: Vec::new(),
            dirs: names.len(),
        };
        for name in names {
            match read_entry(&self.dir.join(&name), &name) {
                Ok(e) => scan.entries.push(e),
                Err(reason) => scan.problems.push(LoadProblem {
                    thumbprint: name.to_ascii_uppercase(),
                    reason,
                }),
            }
        }
        // A crash inside set_default can leave two marks; the newer wins.
        let newest_default = scan
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_default)
            .max_by(|(_, a), (_, b)| {
                a.meta_mtime
                    .cmp(&b.meta_mtime)
                    .then_with(|| b.dir_name.cmp(&a.dir_name))
            })
            .map(|(i, _)| i);
        for (i, e) in scan.entries.iter_mut().enumerate() {
            e.is_default = e.is_default && Some(i) == newest_default;
        }
        scan.problems
            .sort_by(|a, b| a.thumbprint.cmp(&b.thumbprint));
        Ok(scan)
    }

    fn pending_dirs(&self) -> Result<Vec<(String, PathBuf)>, CertError> {
        let pending = self.dir.join(PENDING_DIR);
        let rd = match fs::read_dir(&pending) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(CertError::io("read the directory", &pending)(e)),
        };
        Ok(rd
            .flatten()
            .filter(|d| d.file_type().is_ok_and(|t| t.is_dir()))
            .map(|d| (d.file_name().to_string_lossy().into_owned(), d.path()))
            .filter(|(n, _)| !n.starts_with('.'))
            .collect())
    }

    /// The first pending request whose key belongs to one of `facts`:
    /// (index of that certificate, the key, the request's directory).
    fn match_pending(
        &self,
        facts: &[CertFacts],
    ) -> Result<Option<(usize, PrivateKeyDer<'static>, PathBuf)>, CertError> {
        for (_, dir) in self.pending_dirs()? {
            let Ok(bytes) = fsio::read_limited(&dir.join(KEY_FILE), MAX_FILE) else {
                continue;
            };
            let Ok(key) = PrivateKeyDer::from_pem_slice(&bytes) else {
                continue;
            };
            let Ok(spki) = inspect::key_spki(&key) else {
                continue;
            };
            if let Some(i) = facts.iter().position(|f| f.spki == spki) {
                return Ok(Some((i, key, dir)));
            }
        }
        Ok(None)
    }
}

/// Names of the certificate directories (40 hex digits; everything else,
/// `pending/` and hidden temporaries included, is not a certificate).
fn cert_dir_names(dir: &Path) -> Result<Vec<String>, CertError> {
    let rd = fs::read_dir(dir).map_err(CertError::io("read the directory", dir))?;
    Ok(rd
        .flatten()
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 40 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect())
}

fn read_entry(dir: &Path, dir_name: &str) -> Result<Entry, String> {
    let chain_path = dir.join(CHAIN_FILE);
    let bytes = match fsio::read_limited(&chain_path, MAX_FILE) {
        Ok(b) => b,
        Err(CertError::ReadInput { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Err(format!(
                "{CHAIN_FILE} is missing from {}; import the certificate again",
                dir.display()
            ));
        }
        Err(e) => return Err(e.to_string()),
    };
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", chain_path.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "{} holds no certificate; import the certificate again",
            chain_path.display()
        ));
    };
    let facts = inspect::facts(leaf).map_err(|r| {
        format!(
            "the first certificate in {} cannot be parsed: {r}",
            chain_path.display()
        )
    })?;

    let meta_path = dir.join(META_FILE);
    let meta_mtime = fs::metadata(&meta_path).and_then(|m| m.modified()).ok();
    let (meta, meta_problem) = match fs::read(&meta_path) {
        Ok(b) => match serde_json::from_slice::<Meta>(&b) {
            Ok(m) if m.services.parse::<Services>().is_ok() => (Some(m), None),
            Ok(m) => (
                None,
                Some(format!(
                    "{} names unknown services `{}`; the certificate is treated as enabled for none; fix it with `gatehouse cert enable {} --services smtp`",
                    meta_path.display(),
                    m.services,
                    facts.sha1
                )),
            ),
            Err(e) => (
                None,
                Some(format!(
                    "{} is not valid ({e}); the certificate is treated as enabled for no service; fix it with `gatehouse cert enable {} --services smtp`",
                    meta_path.display(),
                    facts.sha1
                )),
            ),
        },
        Err(e) => (
            None,
            Some(format!(
                "{} cannot be read ({e}); the certificate is treated as enabled for no service; fix it with `gatehouse cert enable {} --services smtp`",
                meta_path.display(),
                facts.sha1
            )),
        ),
    };
    let services = meta
        .as_ref()
        .and_then(|m| m.services.parse().ok())
        .unwrap_or_default();
    let is_default = meta.as_ref().is_some_and(|m| m.is_default);
    Ok(Entry {
        dir: dir.to_path_buf(),
        dir_name: dir_name.to_string(),
        facts,
        chain,
        services,
        is_default,
        meta,
        meta_mtime,
        meta_problem,
    })
}

/// The entry `thumb` designates (see `CertStore::get`).
fn pick<'a>(entries: &'a [Entry], thumb: &str) -> Result<&'a Entry, CertError> {
    pick_index(entries, thumb).map(|i| &entries[i])
}

fn pick_index(entries: &[Entry], thumb: &str) -> Result<usize, CertError> {
    let query: String = thumb
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':' && !c.is_control() && c.is_ascii())
        .collect::<String>()
        .to_ascii_uppercase();
    if query.len() < 8 || !query.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CertError::BadThumbprint {
            given: thumb.to_string(),
        });
    }
    let hits: Vec<usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.facts.sha1.starts_with(&query) || e.facts.sha256.starts_with(&query))
        .map(|(i, _)| i)
        .collect();
    match hits.as_slice() {
        [] => Err(CertError::NotFound {
            given: thumb.to_string(),
        }),
        [one] => Ok(*one),
        many => Err(CertError::Ambiguous {
            given: thumb.to_string(),
            matches: many
                .iter()
                .map(|i| entries[*i].facts.sha1.clone())
                .collect(),
        }),
    }
}

fn others_serve_smtp(entries: &[Entry], target: &Entry, now: SystemTime) -> bool {
    entries
        .iter()
        .any(|e| e.dir != target.dir && e.facts.sha1 != target.facts.sha1 && e.serves_smtp(now))
}

fn meta_bytes(meta: &Meta) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(meta).unwrap_or_default();
    v.push(b'\n');
    v
}

fn write_meta(dir: &Path, meta: &Meta) -> Result<(), CertError> {
    fsio::replace_file(&dir.join(META_FILE), &meta_bytes(meta), PUBLIC_FILE)
}

/// The rustls key for an entry, checked against its leaf.
fn load_key(e: &Entry) -> Result<CertifiedKey, String> {
    let key_path = e.dir.join(KEY_FILE);
    let bytes = match fsio::read_limited(&key_path, MAX_FILE) {
        Ok(b) => b,
        Err(CertError::ReadInput { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Err(format!(
                "{KEY_FILE} is missing from {}; restore it, or import the certificate again from a PEM with its key or a PKCS#12",
                e.dir.display()
            ));
        }
        Err(err) => return Err(err.to_string()),
    };
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|err| {
        format!(
            "the private key in {} cannot be read: {err}; restore the key that belongs to this certificate",
            key_path.display()
        )
    })?;
    let signer = any_supported_type(&key).map_err(|err| {
        format!(
            "the private key in {} cannot be used: {err}",
            key_path.display()
        )
    })?;
    let ck = CertifiedKey::new(e.chain.clone(), signer);
    match ck.keys_match() {
        Ok(()) => Ok(ck),
        Err(_) => Err(CertError::KeyMismatch {
            key_file: key_path.display().to_string(),
            subject: e.facts.subject.clone(),
        }
        .to_string()),
    }
}

/// Parses an import file the way `cert import` does up to the point where
/// the store would be touched: splits it into certificates and keys (PEM,
/// DER or PKCS#12 with `password`) and inspects every certificate.
/// Returns the number of certificates and keys. This is the fuzzing seam
/// for untrusted certificate files (fuzz/fuzz_targets/cert_import.rs).
pub fn parse_import_file(data: &[u8], password: Option<&str>) -> Result<(usize, usize), CertError> {
    let file = Path::new("<input>");
    let material = read_material(data, password, file)?;
    for der in &material.certs {
        inspect::facts(der).map_err(|reason| CertError::BadCertificate {
            path: file.to_path_buf(),
            reason,
        })?;
    }
    Ok((material.certs.len(), material.keys.len()))
}

/// Splits an import file into certificates and keys (PEM, DER or PKCS#12).
fn read_material(data: &[u8], password: Option<&str>, file: &Path) -> Result<Material, CertError> {
    let looks_pem = data.windows(11).any(|w| w == b"-----BEGIN ");
    if looks_pem {
        let text = String::from_utf8_lossy(data);
        if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
            return Err(CertError::EncryptedPemKey {
                path: file.to_path_buf(),
            });
        }
        let mut m = Material {
            certs: Vec::new(),
            keys: Vec::new(),
            friendly_name: None,
        };
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(data) {
            let (kind, der) = section.map_err(|e| CertError::BadCertificate {
                path: file.to_path_buf(),
                reason: format!("bad PEM: {e}"),
            })?;
            match kind {
                SectionKind::Certificate => m.certs.push(der),
                SectionKind::PrivateKey => m
                    .keys
                    .push(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))),
                SectionKind::RsaPrivateKey => m.keys.push(PrivateKeyDer::Pkcs1(der.into())),
                SectionKind::EcPrivateKey => m.keys.push(PrivateKeyDer::Sec1(der.into())),
                _ => {}
            }
        }
        if m.certs.is_empty() {
            return Err(CertError::NoCertificateInFile {
                path: file.to_path_buf(),
            });
        }
        return Ok(m);
    }
    // A bare DER certificate (.cer/.crt from a CA), completing a request.
    if let Ok((rest, _)) = x509_parser::parse_x509_certificate(data)
        && rest.is_empty()
    {
        return Ok(Material {
            certs: vec![data.to_vec()],
            keys: Vec::new(),
            friendly_name: None,
        });
    }
    let bundle = pkcs12::read(data, password.unwrap_or(""), file)?;
    if bundle.certs.is_empty() {
        return Err(CertError::NoCertificateInFile {
            path: file.to_path_buf(),
        });
    }
    if bundle.keys.is_empty() {
        return Err(CertError::Pkcs12NoKey {
            path: file.to_path_buf(),
        });
    }
    Ok(Material {
        certs: bundle.certs,
        keys: bundle
            .keys
            .into_iter()
            .map(|k| PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k)))
            .collect(),
        friendly_name: bundle.friendly_name,
    })
}

/// Leaf first, then each issuer found in the file, checked by signature.
/// The self-signed root is left out (peers must already have it); certs
/// unrelated to the leaf are dropped.
fn build_chain(
    certs: &[Vec<u8>],
    facts: &[CertFacts],
    leaf: usize,
    file: &Path,
) -> Result<Vec<Vec<u8>>, CertError> {
    let mut chain = vec![certs[leaf].clone()];
    let mut used = vec![leaf];
    let mut current = leaf;
    while chain.len() < MAX_CHAIN && facts[current].subject_raw != facts[current].issuer_raw {
        let Some(next) = (0..certs.len())
            .find(|i| !used.contains(i) && facts[*i].subject_raw == facts[current].issuer_raw)
        else {
            break;
        };
        if !inspect::is_signed_by(&certs[current], &certs[next]) {
            return Err(CertError::ChainBroken {
                path: file.to_path_buf(),
                subject: facts[current].subject.clone(),
                next: facts[next].subject.clone(),
            });
        }
        if facts[next].self_signed {
            break;
        }
        chain.push(certs[next].clone());
        used.push(next);
        current = next;
    }
    Ok(chain)
}

//! Certificate selection at handshake time, fed by the certificate store.
//!
//! ```text
//! CertStore (disk) --load()--> StoreState { infos, keys, problems }
//!                                   |  ArcSwap: a reload swaps the whole state
//!                                   v
//! ConnectorResolver (one per connector: its FQDN, its service)
//!     resolve(ClientHello): certs::select(infos, service, SNI, FQDN)
//!         -> that certificate's key
//!         -> nothing selectable: the ephemeral self-signed certificate
//!            and a loud CertificateFallback event (never silent)
//! ```
//!
//! The state is swapped atomically, so a handshake sees either the old or
//! the new store, and open sessions keep the certificate they started with.
//! `CertificateSet::watch` polls the store's generation and reloads within
//! seconds of an import, an `enable` or a file replaced on disk; it also
//! repeats the fallback and expiry events every hour while they last.

use crate::certs::{CertInfo, CertStore, Service, choose, select};
use crate::events::{
    self, CertificateExpired, CertificateExpiresSoon, CertificateFallback, CertificateUnusable,
    CertificatesReloaded,
};
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// What one load of the store produced.
pub struct StoreState {
    pub infos: Vec<CertInfo>,
    keys: HashMap<String, Arc<CertifiedKey>>,
    /// (thumbprint, reason) for certificates that could not be used.
    pub problems: Vec<(String, String)>,
    generation: u64,
}

/// The live certificate state shared by every TLS listener.
pub struct CertificateSet {
    state: ArcSwap<StoreState>,
    ephemeral: Arc<CertifiedKey>,
    ephemeral_thumb: String,
    /// Connector → when its no-certificate fallback was last announced.
    fallback_announced: Mutex<HashMap<String, Instant>>,
    /// (thumbprint, days threshold) already warned about.
    expiry_warned: Mutex<HashMap<String, i64>>,
}

const REPEAT: Duration = Duration::from_secs(3600);

impl CertificateSet {
    /// Loads the store and makes the ephemeral certificate used when
    /// nothing in the store is usable.
    pub fn load(store: &CertStore, hostname: &str) -> Result<Arc<CertificateSet>, String> {
        crate::tls::install_provider();
        let eph = rcgen::generate_simple_self_signed(vec![hostname.to_string()])
            .map_err(|e| format!("cannot create the ephemeral certificate: {e}"))?;
        let key_der =
            rustls_pki_types::PrivateKeyDer::Pkcs8(eph.signing_key.serialize_der().into());
        let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der)
            .map_err(|e| format!("ephemeral key: {e}"))?;
        let cert_der = eph.cert.der().clone();
        let ephemeral_thumb = crate::certs::sha1_thumbprint(&cert_der);
        let set = Arc::new(CertificateSet {
            state: ArcSwap::from_pointee(read_state(store)),
            ephemeral: Arc::new(CertifiedKey::new(vec![cert_der], signing)),
            ephemeral_thumb,
            fallback_announced: Mutex::new(HashMap::new()),
            expiry_warned: Mutex::new(HashMap::new()),
        });
        Ok(set)
    }

    pub fn state(&self) -> arc_swap::Guard<Arc<StoreState>> {
        self.state.load()
    }

    /// A resolver for one connector.
    pub fn resolver(
        self: &Arc<Self>,
        connector: &str,
        fqdn: &str,
        service: Service,
    ) -> Arc<ConnectorResolver> {
        Arc::new(ConnectorResolver {
            set: self.clone(),
            connector: connector.into(),
            fqdn: fqdn.into(),
            service,
        })
    }

    /// Re-reads the store if it changed; returns whether it did.
    pub fn reload_if_changed(&self, store: &CertStore) -> bool {
        if store.generation() == self.state.load().generation {
            return false;
        }
        let new = read_state(store);
        events::emit(CertificatesReloaded {
            usable: new.keys.len(),
            unusable: new.problems.len(),
        });
        self.state.store(Arc::new(new));
        true
    }

    /// Emits the events an operator must see: unusable certificates (with
    /// the one used instead for each connector), expiry warnings. Called at
    /// start, after every reload and hourly.
    /// `listeners`: (name, FQDN, service) of every TLS listener (receive
    /// connectors with service smtp, proxy listeners with https).
    pub fn announce(&self, listeners: &[(String, String, Service)]) {
        let connectors = listeners;
        let st = self.state.load();
        let now = SystemTime::now();
        for (thumb, reason) in &st.problems {
            events::emit(CertificateUnusable {
                thumbprint: thumb,
                reason,
            });
            for (name, fqdn, service) in connectors {
                let sel = select(&st.infos, *service, None, fqdn, now);
                let used = sel
                    .chosen
                    .map(|c| c.sha1.clone())
                    .unwrap_or_else(|| format!("{} (ephemeral self-signed)", self.ephemeral_thumb));
                events::emit(CertificateFallback {
                    connector: name,
                    detail: &format!("wanted certificate {thumb} cannot be loaded ({reason})"),
                    used: &used,
                });
            }
        }
        for (name, fqdn, service) in connectors {
            if select(&st.infos, *service, None, fqdn, now)
                .chosen
                .is_none()
            {
                events::emit(CertificateFallback {
                    connector: name,
                    detail: &format!(
                        "no valid certificate enabled for {} matches {fqdn} and there is no usable default",
                        service.as_str()
                    ),
                    used: &format!(
                        "the ephemeral self-signed certificate {}",
                        self.ephemeral_thumb
                    ),
                });
            }
        }
        let mut warned = self.expiry_warned.lock().unwrap_or_else(|e| e.into_inner());
        for c in st
            .infos
            .iter()
            .filter(|c| c.services.smtp || c.services.https)
        {
            let left = c
                .not_after
                .duration_since(now)
                .map(|d| d.as_secs() as i64 / 86_400)
                .unwrap_or(-1);
            if c.not_after <= now {
                events::emit(CertificateExpired {
                    thumbprint: &c.sha1,
                    subject: &c.subject,
                });
                continue;
            }
            let threshold = [1, 7, 14, 30].into_iter().find(|t| left < *t);
            if let Some(t) = threshold
                && warned.get(&c.sha1) != Some(&t)
            {
                warned.insert(c.sha1.clone(), t);
                events::emit(CertificateExpiresSoon {
                    thumbprint: &c.sha1,
                    subject: &c.subject,
                    days: left,
                });
            }
        }
    }

    /// Polls the store every `every` and repeats announcements hourly.
    /// Runs until the task is dropped.
    pub async fn watch(
        self: Arc<Self>,
        store: CertStore,
        connectors: Vec<(String, String, Service)>,
        every: Duration,
    ) {
        let mut last_announce = Instant::now();
        loop {
            tokio::time::sleep(every).await;
            let set = self.clone();
            let st = store.clone();
            let changed = tokio::task::spawn_blocking(move || set.reload_if_changed(&st))
                .await
                .unwrap_or(false);
            if changed || last_announce.elapsed() >= REPEAT {
                self.announce(&connectors);
                last_announce = Instant::now();
            }
        }
    }
}

fn read_state(store: &CertStore) -> StoreState {
    let generation = store.generation();
    let report = store.load();
    let mut infos = Vec::new();
    let mut keys = HashMap::new();
    for c in report.usable {
        keys.insert(c.info.sha1.clone(), c.certified_key.clone());
        infos.push(c.info);
    }
    let problems = report
        .problems
        .into_iter()
        .map(|p| (p.thumbprint, p.reason))
        .collect();
    StoreState {
        infos,
        keys,
        problems,
        generation,
    }
}

/// Chooses the certificate for one connector's handshakes.
pub struct ConnectorResolver {
    set: Arc<CertificateSet>,
    connector: String,
    fqdn: String,
    service: Service,
}

impl std::fmt::Debug for ConnectorResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorResolver")
            .field("connector", &self.connector)
            .field("fqdn", &self.fqdn)
            .finish()
    }
}

impl ResolvesServerCert for ConnectorResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let st = self.set.state.load();
        // `choose`: the same rule as `select`, without building the
        // explanation on every handshake.
        let (chosen, _) = choose(
            &st.infos,
            self.service,
            hello.server_name(),
            &self.fqdn,
            SystemTime::now(),
        );
        if let Some(key) = chosen.and_then(|c| st.keys.get(&c.sha1)) {
            return Some(key.clone());
        }
        // Nothing usable: still offer TLS, and say so (at most hourly).
        let mut announced = self
            .set
            .fallback_announced
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if announced
            .get(&self.connector)
            .is_none_or(|t| t.elapsed() >= REPEAT)
        {
            announced.insert(self.connector.clone(), Instant::now());
            events::emit(CertificateFallback {
                connector: &self.connector,
                detail: &format!(
                    "handshake for {} found no usable certificate",
                    hello.server_name().unwrap_or(&self.fqdn)
                ),
                used: &format!(
                    "the ephemeral self-signed certificate {}",
                    self.set.ephemeral_thumb
                ),
            });
        }
        Some(self.set.ephemeral.clone())
    }
}

//! `gatehouse cert ...`: the certificate store from the command line.
//!
//! Each subcommand is one store call plus plain aligned text output, so
//! the commands can be read as documentation of the library API. Output
//! goes to the writer `run` is given (stdout in the binary), errors are
//! returned for `main.rs` to print as `gatehouse: <error>` with exit 1.

use super::store::CertDetails;
use super::{CertError, CertInfo, CertStore, KeyKind, MatchedBy, Service, Services, select};
use crate::config::{Config, ConfigErrors};
use crate::timefmt::iso8601_millis;
use clap::{Args, Subcommand};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// `gatehouse cert`: list, create, request, import, export, enable and
/// remove certificates, and show which one a connector would present.
#[derive(Args, Debug)]
pub struct CertCommand {
    #[command(subcommand)]
    pub action: CertAction,
}

#[derive(Subcommand, Debug)]
pub enum CertAction {
    /// List the certificates, pending requests and problems.
    List,
    /// Show one certificate in full.
    Show {
        /// SHA-1 or SHA-256 thumbprint, or a unique prefix of 8+ digits.
        thumb: String,
    },
    /// Create a self-signed certificate (it does not become the default).
    NewSelfSigned {
        /// DNS name or IP address; the first becomes the subject CN. Repeat for more.
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        #[arg(long, value_enum, default_value_t = KeyKind::EcdsaP256)]
        key: KeyKind,
        /// smtp, https, smtp,https or none.
        #[arg(long, default_value = "smtp")]
        services: Services,
    },
    /// Create a key and a certificate signing request (CSR) for a CA.
    Request {
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        #[arg(long, value_enum, default_value_t = KeyKind::EcdsaP256)]
        key: KeyKind,
    },
    /// Import a PEM (chain + key, or a certificate completing a request) or a PKCS#12 file.
    Import {
        file: PathBuf,
        /// File holding the PKCS#12 password (one trailing newline is ignored).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Export a certificate with its chain and key as PKCS#12.
    Export {
        thumb: String,
        /// Output file; it must not exist yet.
        #[arg(long)]
        pkcs12: PathBuf,
        /// File holding the password for the new PKCS#12 file.
        #[arg(long)]
        password_file: PathBuf,
    },
    /// Set the services a certificate is enabled for (replaces the old set).
    Enable {
        thumb: String,
        /// smtp, https, smtp,https or none.
        #[arg(long)]
        services: Services,
    },
    /// Make a certificate the default (used when no certificate matches by name).
    Default { thumb: String },
    /// Remove a certificate and its key.
    Remove { thumb: String },
    /// Show which certificate a connector presents, and why.
    Which {
        /// Receive connector name from the configuration.
        #[arg(long)]
        connector: String,
        /// The SNI host name a client would send.
        #[arg(long)]
        sni: Option<String>,
        #[arg(long, default_value = "smtp")]
        service: Service,
    },
}

/// Why a `gatehouse cert` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CertCliError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("cannot read the password file {}: {source}; give a file that holds the password on its first line", path.display())]
    PasswordFile { path: PathBuf, source: io::Error },
    #[error("no receive connector is named `{name}`; the configuration has: {known}")]
    UnknownConnector { name: String, known: String },
    #[error(
        "no certificate can serve {service} for connector `{connector}`, so the server would fall back to a temporary self-signed certificate; enable one with `gatehouse cert enable THUMB --services {service}` or create one with `gatehouse cert new-self-signed --name {fqdn} --services {service}`"
    )]
    NothingSelected {
        service: Service,
        connector: String,
        fqdn: String,
    },
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
}

impl CertCommand {
    /// Runs the command against the store of the configuration found from
    /// `config` (the same rule as `gatehouse serve`).
    pub fn run(&self, config: Option<&Path>, out: &mut dyn Write) -> Result<(), CertCliError> {
        let (cfg, _source) = Config::load(config).map_err(CertCliError::Config)?;
        let store = CertStore::open(&cfg.server.data_dir)?;
        match &self.action {
            CertAction::List => list(&store, out),
            CertAction::Show { thumb } => {
                show(&store.details(thumb)?, out)?;
                Ok(())
            }
            CertAction::NewSelfSigned {
                names,
                key,
                services,
            } => {
                let info = store.new_self_signed(names, *key, *services)?;
                writeln!(out, "created {}", info.sha1)?;
                show(&store.details(&info.sha1)?, out)?;
                Ok(())
            }
            CertAction::Request { names, key } => {
                let path = store.request(names, *key)?;
                let pem =
                    std::fs::read_to_string(&path).map_err(|source| CertError::ReadInput {
                        path: path.clone(),
                        source,
                    })?;
                writeln!(out, "request written to {}", path.display())?;
                writeln!(
                    out,
                    "send it to your CA, then import the signed certificate with `gatehouse cert import FILE`; the key stays in {}",
                    path.parent().unwrap_or(Path::new(".")).display()
                )?;
                write!(out, "{pem}")?;
                Ok(())
            }
            CertAction::Import {
                file,
                password_file,
            } => {
                let password = password_file.as_deref().map(read_password).transpose()?;
                let info = store.import(file, password.as_deref())?;
                writeln!(out, "imported {} {}", info.sha1, info.subject)?;
                writeln!(
                    out,
                    "it is enabled for no service yet; use `gatehouse cert enable {} --services smtp` (or https, or smtp,https)",
                    info.sha1
                )?;
                Ok(())
            }
            CertAction::Export {
                thumb,
                pkcs12,
                password_file,
            } => {
                let password = read_password(password_file)?;
                let info = store.get(thumb)?;
                store.export_pkcs12(thumb, &password, pkcs12)?;
                writeln!(
                    out,
                    "exported {} with its chain and private key to {} (PKCS#12, AES-256, mode 0600)",
                    info.sha1,
                    pkcs12.display()
                )?;
                Ok(())
            }
            CertAction::Enable { thumb, services } => {
                let info = store.enable(thumb, *services)?;
                writeln!(out, "{} is now enabled for: {}", info.sha1, info.services)?;
                Ok(())
            }
            CertAction::Default { thumb } => {
                let info = store.get(thumb)?;
                store.set_default(thumb)?;
                writeln!(out, "{} is now the default certificate", info.sha1)?;
                if !info.services.smtp {
                    writeln!(
                        out,
                        "note: it is not enabled for SMTP; the default is used only for the services it is enabled for"
                    )?;
                }
                Ok(())
            }
            CertAction::Remove { thumb } => {
                let info = store.get(thumb)?;
                store.remove(thumb)?;
                writeln!(out, "removed {} {}", info.sha1, info.subject)?;
                Ok(())
            }
            CertAction::Which {
                connector,
                sni,
                service,
            } => which(&cfg, &store, connector, sni.as_deref(), *service, out),
        }
    }
}

fn read_password(path: &Path) -> Result<String, CertCliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CertCliError::PasswordFile {
        path: path.to_path_buf(),
        source,
    })?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
}

fn list(store: &CertStore, out: &mut dyn Write) -> Result<(), CertCliError> {
    let now = SystemTime::now();
    let certs = store.list()?;
    let report = store.load();
    let pending = store.pending_requests()?;
    if certs.is_empty() {
        writeln!(
            out,
            "no certificates in {}; `gatehouse serve` creates a self-signed default on first start, or run `gatehouse cert new-self-signed --name HOST`",
            store.dir().display()
        )?;
    } else {
        let rows = certs
            .iter()
            .map(|c| {
                vec![
                    c.sha1.clone(),
                    c.services.to_string(),
                    if c.is_default { "yes" } else { "" }.to_string(),
                    expiry(c, now),
                    c.key_type.clone(),
                    if c.self_signed { "self-signed" } else { "CA" }.to_string(),
                    c.subject.clone(),
                ]
            })
            .collect();
        write!(
            out,
            "{}",
            table(
                &[
                    "THUMBPRINT",
                    "SERVICES",
                    "DEFAULT",
                    "NOT AFTER",
                    "KEY",
                    "ISSUER",
                    "SUBJECT"
                ],
                rows
            )
        )?;
    }
    if !pending.is_empty() {
        writeln!(
            out,
            "\npending requests (import the signed certificate to complete):"
        )?;
        for p in &pending {
            writeln!(out, "  {}  {}", p.name, p.csr_path.display())?;
        }
    }
    if !report.problems.is_empty() {
        writeln!(out, "\nproblems:")?;
        for p in &report.problems {
            writeln!(out, "  {}: {}", p.thumbprint, p.reason)?;
        }
    }
    Ok(())
}

fn expiry(c: &CertInfo, now: SystemTime) -> String {
    let day = &iso8601_millis(c.not_after)[..10];
    match c.remaining(now) {
        None => format!("{day} (expired)"),
        Some(left) if left.as_secs() < 30 * 86_400 => {
            format!("{day} ({} days left)", left.as_secs() / 86_400)
        }
        Some(_) => day.to_string(),
    }
}

fn show(d: &CertDetails, out: &mut dyn Write) -> io::Result<()> {
    let c = &d.info;
    let now = SystemTime::now();
    let lines: Vec<(&str, String)> = vec![
        ("thumbprint", c.sha1.clone()),
        ("sha256", c.sha256.clone()),
        ("subject", c.subject.clone()),
        ("names", c.sans.join(", ")),
        ("issuer", c.issuer.clone()),
        (
            "provenance",
            if c.self_signed {
                "self-signed"
            } else {
                "CA-issued"
            }
            .into(),
        ),
        ("not before", iso8601_millis(c.not_before)),
        (
            "not after",
            format!("{} ({})", iso8601_millis(c.not_after), expiry_words(c, now)),
        ),
        ("key", c.key_type.clone()),
        ("services", c.services.to_string()),
        ("default", if c.is_default { "yes" } else { "no" }.into()),
        ("friendly name", c.friendly_name.clone().unwrap_or_default()),
        ("imported", d.imported_at.clone().unwrap_or_default()),
        (
            "chain",
            if d.chain.is_empty() {
                "leaf only".into()
            } else {
                d.chain.join(" <- ")
            },
        ),
        ("directory", d.dir.display().to_string()),
    ];
    for (k, v) in lines {
        let v = if v.is_empty() { "-".to_string() } else { v };
        writeln!(out, "{:<14} {v}", format!("{k}:"))?;
    }
    Ok(())
}

fn expiry_words(c: &CertInfo, now: SystemTime) -> String {
    match c.remaining(now) {
        None => "expired".into(),
        Some(left) => format!("{} days left", left.as_secs() / 86_400),
    }
}

fn which(
    cfg: &Config,
    store: &CertStore,
    connector: &str,
    sni: Option<&str>,
    service: Service,
    out: &mut dyn Write,
) -> Result<(), CertCliError> {
    let Some(conn) = cfg
        .receive_connector
        .iter()
        .find(|c| c.name.get_ref().eq_ignore_ascii_case(connector))
    else {
        return Err(CertCliError::UnknownConnector {
            name: connector.into(),
            known: cfg
                .receive_connector
                .iter()
                .map(|c| format!("`{}`", c.name.get_ref()))
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let fqdn = conn
        .fqdn
        .as_ref()
        .map(|d| d.to_string())
        .unwrap_or_else(|| cfg.server.hostname.get_ref().to_string());
    let report = store.load();
    let infos: Vec<CertInfo> = report.usable.iter().map(|l| l.info.clone()).collect();
    let sel = select(&infos, service, sni, &fqdn, SystemTime::now());

    writeln!(out, "connector:   {} (fqdn {fqdn})", conn.name.get_ref())?;
    writeln!(out, "service:     {service}")?;
    writeln!(out, "sni:         {}", sni.unwrap_or("(none)"))?;
    match sel.chosen {
        Some(c) => {
            let how = match sel.matched_by {
                MatchedBy::Sni => "matched by SNI",
                MatchedBy::Fqdn => "matched by connector FQDN",
                MatchedBy::Default => "the default certificate",
                MatchedBy::None => "",
            };
            writeln!(out, "chosen:      {} ({how})", c.sha1)?;
            writeln!(out, "subject:     {}", c.subject)?;
            writeln!(out, "expires:     {}", iso8601_millis(c.not_after))?;
        }
        None => writeln!(out, "chosen:      none")?,
    }
    writeln!(out, "explanation:")?;
    for line in &sel.explanation {
        writeln!(out, "  {line}")?;
    }
    for p in &report.problems {
        writeln!(out, "  {}: not loadable, {}", p.thumbprint, p.reason)?;
    }
    if sel.chosen.is_none() {
        return Err(CertCliError::NothingSelected {
            service,
            connector: conn.name.get_ref().clone(),
            fqdn,
        });
    }
    Ok(())
}

/// Plain aligned columns; the last column is not padded.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows.iter()) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push('\n');
    }
    out
}

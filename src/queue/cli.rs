//! `gatehouse queue list|show|retry|delete|bounce|flush`: the operator's
//! view of the running server's queue, over the admin API's `/queue`
//! endpoints (src/admin/queue.rs), as Postfix's `postqueue -p` /
//! `postsuper` and Exchange's Get-Queue / Get-Message / Retry-Queue /
//! Remove-Message offer it. Tables by default, `--json` for scripts.

use crate::admin::client::{self, ClientError};
use crate::config::{Config, ConfigErrors};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, clap::Subcommand)]
pub enum QueueCommand {
    /// Queued messages, oldest first.
    List {
        /// Only messages with an unfinished recipient for this
        /// destination (a domain, or local:MAILBOX).
        #[arg(long)]
        destination: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One message with every recipient's state, attempts and last error.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Try a message now, or every message for `--destination` now.
    Retry {
        #[arg(
            required_unless_present = "destination",
            conflicts_with = "destination"
        )]
        id: Option<String>,
        #[arg(long)]
        destination: Option<String>,
    },
    /// Remove a message without a DSN (postsuper -d).
    Delete { id: String },
    /// Remove a message and send its sender a failure DSN.
    Bounce { id: String },
    /// Try everything deferred now (postqueue -f).
    Flush,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueCliError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("{0}")]
    Admin(#[from] ClientError),
    /// The server refused: its message, as the admin API gave it.
    #[error("{0}")]
    Refused(String),
    #[error(
        "`{0}` is not a destination (letters, digits, `.`, `-`, `_`, `:` only)\n  = hint: a domain such as example.test, or local:MAILBOX"
    )]
    BadDestination(String),
    #[error("unexpected answer from the admin API: {0}")]
    Unexpected(String),
}

/// A message as the admin API sends it (`ops::MessageView` on the wire).
#[derive(Debug, serde::Deserialize)]
pub struct MessageView {
    pub id: String,
    pub from: String,
    pub received_at: u64,
    pub recipients: Vec<RecipientView>,
}

/// A recipient as the admin API sends it (`ops::RecipientView`).
#[derive(Debug, serde::Deserialize)]
pub struct RecipientView {
    pub address: String,
    pub destination: String,
    pub state: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_try: Option<u64>,
}

impl QueueCliError {
    /// 2 when the server could not be reached, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            QueueCliError::Admin(ClientError::Connect { .. } | ClientError::NoAdmin) => 2,
            _ => 1,
        }
    }
}

/// Query values are sent as they are: allow only what a destination can be.
fn checked(destination: &str) -> Result<&str, QueueCliError> {
    if !destination.is_empty()
        && destination
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        Ok(destination)
    } else {
        Err(QueueCliError::BadDestination(destination.to_string()))
    }
}

fn age(received_at: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let s = now.saturating_sub(received_at);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

fn next_try(t: Option<u64>) -> String {
    let Some(t) = t else { return "-".into() };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if t <= now {
        "now".into()
    } else {
        format!("in {}", age(now - (t - now)))
    }
}

/// `list` as a table: one row per message.
pub fn list_table(messages: &[MessageView]) -> String {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    t.set_header([
        "ID",
        "From",
        "Age",
        "Recipients (pending/all)",
        "Destinations",
        "Next try",
        "Last error",
    ]);
    for m in messages {
        let pending: Vec<_> = m.recipients.iter().filter(|r| r.state != "done").collect();
        let mut dests: Vec<&str> = pending.iter().map(|r| r.destination.as_str()).collect();
        dests.sort_unstable();
        dests.dedup();
        let next = pending.iter().filter_map(|r| r.next_try).min();
        let error = pending
            .iter()
            .find_map(|r| r.last_error.as_deref())
            .unwrap_or("");
        t.add_row([
            m.id.clone(),
            if m.from.is_empty() {
                "<>".into()
            } else {
                m.from.clone()
            },
            age(m.received_at),
            format!("{}/{}", pending.len(), m.recipients.len()),
            dests.join(", "),
            next_try(next),
            error.chars().take(80).collect(),
        ]);
    }
    format!("{t}\n{} message(s)\n", messages.len())
}

/// `show` as text: the message, then a table of its recipients.
pub fn show_text(m: &MessageView) -> String {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    t.set_header([
        "Recipient",
        "Destination",
        "State",
        "Attempts",
        "Next try",
        "Last error",
    ]);
    for r in &m.recipients {
        t.add_row([
            r.address.clone(),
            r.destination.clone(),
            r.state.to_string(),
            r.attempts.to_string(),
            next_try(r.next_try),
            r.last_error.clone().unwrap_or_default(),
        ]);
    }
    format!(
        "ID:       {}\nFrom:     {}\nReceived: {} ago\n{t}\n",
        m.id,
        if m.from.is_empty() { "<>" } else { &m.from },
        age(m.received_at)
    )
}

impl QueueCommand {
    pub fn run(&self, config: Option<&Path>, out: &mut dyn Write) -> Result<(), QueueCliError> {
        let (cfg, _) = Config::load(config).map_err(QueueCliError::Config)?;
        let (method, path) = match self {
            QueueCommand::List { destination, .. } => (
                "GET",
                match destination {
                    Some(d) => format!("/queue?destination={}", checked(d)?),
                    None => "/queue".into(),
                },
            ),
            QueueCommand::Show { id, .. } => ("GET", format!("/queue/{id}")),
            QueueCommand::Retry {
                destination: Some(d),
                ..
            } => ("POST", format!("/queue/retry?destination={}", checked(d)?)),
            QueueCommand::Retry { id, .. } => (
                "POST",
                format!("/queue/{}/retry", id.as_deref().unwrap_or_default()),
            ),
            QueueCommand::Delete { id } => ("DELETE", format!("/queue/{id}")),
            QueueCommand::Bounce { id } => ("POST", format!("/queue/{id}/bounce")),
            QueueCommand::Flush => ("POST", "/queue/flush".into()),
        };
        // IDs are 16 hex digits: anything that would change the path is
        // refused here rather than sent.
        if path.contains("//") || path.contains("..") || path.contains(' ') {
            return Err(QueueCliError::Refused(format!(
                "`{path}` is not a queue path; IDs are 16 hex digits (`gatehouse queue list`)"
            )));
        }
        let r = client::call(&cfg, method, &path)?;
        let body: serde_json::Value = serde_json::from_str(&r.body)
            .map_err(|_| QueueCliError::Unexpected(format!("{} {}", r.status, r.body.trim())))?;
        if !(200..300).contains(&r.status) {
            let msg = body
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or(r.body.trim());
            return Err(QueueCliError::Refused(msg.to_string()));
        }
        let unexpected = |e: serde_json::Error| QueueCliError::Unexpected(e.to_string());
        let text = match self {
            QueueCommand::List { json: true, .. } | QueueCommand::Show { json: true, .. } => {
                format!("{}\n", r.body.trim_end())
            }
            QueueCommand::List { .. } => {
                list_table(&serde_json::from_value::<Vec<MessageView>>(body).map_err(unexpected)?)
            }
            QueueCommand::Show { .. } => {
                show_text(&serde_json::from_value::<MessageView>(body).map_err(unexpected)?)
            }
            QueueCommand::Retry { id: Some(id), .. } => format!("{id}: retry scheduled now\n"),
            QueueCommand::Retry { .. } => format!(
                "{} message(s) for {} retried now\n",
                body.get("retried").and_then(|n| n.as_u64()).unwrap_or(0),
                body.get("destination")
                    .and_then(|d| d.as_str())
                    .unwrap_or("?")
            ),
            QueueCommand::Delete { id } => format!("{id}: deleted (no DSN sent)\n"),
            QueueCommand::Bounce { id } => {
                format!("{id}: removed; a failure DSN was queued to the sender\n")
            }
            QueueCommand::Flush => format!(
                "{} message(s) scheduled for delivery now\n",
                body.get("flushed").and_then(|n| n.as_u64()).unwrap_or(0)
            ),
        };
        let _ = out.write_all(text.as_bytes());
        Ok(())
    }
}

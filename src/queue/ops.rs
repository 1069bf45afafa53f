//! Operator actions on the queue, as Postfix's postqueue/postsuper and
//! Exchange's Get-Queue/Get-Message/Retry-Queue/Remove-Message offer
//! them: list, show, retry (one message or a destination), delete (no
//! DSN), bounce (failure DSN), flush. The admin API and `gatehouse queue`
//! (issue 5 item 6) call these.
//!
//! Every action goes through the same per-recipient state as delivery:
//! `delete` and `bounce` mark recipients finished in the journal (after
//! the DSN is durable, for `bounce`), and an in-flight relay job drops
//! recipients that were finished meanwhile, so nothing is delivered after
//! it was deleted, except what was already on the wire.

use super::Queue;
use super::dsn::DsnKind;
use super::message::{QueueId, Route};
use super::relay::{RetryState, Tracked};
use crate::events;
use serde::Serialize;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// One recipient as `list`/`show` report it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RecipientView {
    pub address: String,
    /// `local:<mailbox>` or the relay domain.
    pub destination: String,
    /// `queued`, `deferred` or `done`.
    pub state: &'static str,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Seconds since the epoch.
    pub next_try: Option<u64>,
}

/// One queued message.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MessageView {
    pub id: String,
    pub from: String,
    /// Seconds since the epoch.
    pub received_at: u64,
    pub recipients: Vec<RecipientView>,
}

/// Why an action could not be done.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpError {
    #[error("no queued message with ID {0}; `gatehouse queue list` shows the IDs")]
    NotFound(String),
    #[error("`{0}` is not a queue ID (16 hex digits)")]
    BadId(String),
    #[error("the DSN could not be queued (storage failure); the message is kept")]
    Storage,
}

fn parse_id(id: &str) -> Result<QueueId, OpError> {
    if id.len() != 16 {
        return Err(OpError::BadId(id.to_string()));
    }
    u64::from_str_radix(id, 16)
        .map(QueueId)
        .map_err(|_| OpError::BadId(id.to_string()))
}

fn destination(route: &Route) -> String {
    match route {
        Route::Mailbox { name, .. } => format!("local:{name}"),
        Route::Relay { domain } => domain.clone(),
    }
}

fn view(msg: &Tracked) -> MessageView {
    let done = msg.done.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let retry = msg.retry.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let recipients = msg
        .envelope
        .recipients
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let i = i as u32;
            let st: Option<&RetryState> = retry.get(&i);
            RecipientView {
                address: r.address.clone(),
                destination: destination(&r.route),
                state: if done.contains(&i) {
                    "done"
                } else if st.is_some() {
                    "deferred"
                } else {
                    "queued"
                },
                attempts: st.map_or(0, |s| s.attempts),
                last_error: st.map(|s| format!("{} {}", s.status, s.last_error)),
                next_try: st.map(|s| {
                    s.next_try
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs()
                }),
            }
        })
        .collect();
    MessageView {
        id: msg.envelope.id.to_string(),
        from: msg.envelope.mail_from.clone(),
        received_at: msg.envelope.received_at,
        recipients,
    }
}

impl Queue {
    /// Marks recipients finished and drops the message from the index
    /// once all are.
    pub(crate) fn finish(&self, msg: &Tracked, rcpts: Vec<u32>) -> bool {
        let finished = msg.finish(&self.inner.journal, &self.inner.stats, rcpts);
        if finished {
            self.inner.state_log.forget(msg.envelope.id);
            self.inner
                .index
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&msg.envelope.id);
        }
        finished
    }

    fn tracked(&self) -> Vec<Arc<Tracked>> {
        let mut v: Vec<Arc<Tracked>> = self
            .inner
            .index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|m| m.envelope.id);
        v
    }

    fn find(&self, id: &str) -> Result<Arc<Tracked>, OpError> {
        let qid = parse_id(id)?;
        self.inner
            .index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&qid)
            .cloned()
            .ok_or_else(|| OpError::NotFound(id.to_string()))
    }

    /// Queued messages, oldest first; with `destination`, only those with
    /// an unfinished recipient for it (a domain or `local:<mailbox>`).
    pub fn list(&self, destination: Option<&str>) -> Vec<MessageView> {
        self.tracked()
            .iter()
            .map(|m| view(m))
            .filter(|v| {
                destination.is_none_or(|d| {
                    v.recipients
                        .iter()
                        .any(|r| r.state != "done" && r.destination.eq_ignore_ascii_case(d))
                })
            })
            .collect()
    }

    /// One message.
    pub fn show(&self, id: &str) -> Result<MessageView, OpError> {
        self.find(id).map(|m| view(&m))
    }

    /// Tries a message's deferred recipients now.
    pub fn retry(&self, id: &str) -> Result<(), OpError> {
        self.find(id)?.wake.notify_waiters();
        Ok(())
    }

    /// Tries every message waiting for `destination` now; returns how many.
    pub fn retry_destination(&self, destination: &str) -> usize {
        let list = self.list(Some(destination));
        for v in &list {
            let _ = self.retry(&v.id);
        }
        list.len()
    }

    /// Tries everything deferred now; returns how many messages.
    pub fn flush(&self) -> usize {
        let all = self.tracked();
        for m in &all {
            m.wake.notify_waiters();
        }
        all.len()
    }

    fn unfinished(msg: &Tracked) -> Vec<u32> {
        let done = msg.done.lock().unwrap_or_else(|e| e.into_inner());
        (0..msg.envelope.recipients.len() as u32)
            .filter(|i| !done.contains(i))
            .collect()
    }

    /// Removes a message without a DSN (postsuper -d).
    pub fn delete(&self, id: &str) -> Result<(), OpError> {
        let msg = self.find(id)?;
        let rest = Self::unfinished(&msg);
        let n = rest.len();
        self.finish(&msg, rest);
        msg.wake.notify_waiters();
        events::emit(events::MessageRemovedByAdmin {
            detail: &format!("queue {id}: deleted by an operator, {n} recipient(s), no DSN"),
        });
        Ok(())
    }

    /// Removes a message and sends the sender a failure DSN for every
    /// unfinished recipient (Exchange Remove-Message -WithNDR).
    pub async fn bounce(&self, id: &str) -> Result<(), OpError> {
        let msg = self.find(id)?;
        let rest = Self::unfinished(&msg);
        let failed: Vec<(u32, String, String, Option<String>)> = rest
            .iter()
            .map(|i| {
                (
                    *i,
                    "5.0.0".to_string(),
                    "the message was removed from the queue by an administrator".to_string(),
                    None,
                )
            })
            .collect();
        if !self.notify(&msg, DsnKind::Failure, &failed).await {
            return Err(OpError::Storage);
        }
        let n = rest.len();
        self.finish(&msg, rest);
        msg.wake.notify_waiters();
        events::emit(events::MessageRemovedByAdmin {
            detail: &format!(
                "queue {id}: bounced by an operator, {n} recipient(s), failure DSN sent"
            ),
        });
        Ok(())
    }

    /// How long ago the oldest queued message arrived (for monitoring).
    pub fn oldest_age(&self) -> Option<std::time::Duration> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.tracked()
            .iter()
            .map(|m| m.envelope.received_at)
            .min()
            .map(|t| std::time::Duration::from_secs(now.saturating_sub(t)))
    }
}

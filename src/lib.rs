//! Gatehouse: a mail-transport server and HTTPS client-access proxy with
//! Exchange-grade TLS.
//!
//! Data path (folders follow it):
//!
//! ```text
//! listener (smtp::inbound::listener)
//!   -> session state machine (smtp::inbound::session)
//!   -> acceptance policy (smtp::inbound::policy)
//!   -> durable queue, group-committed journal (queue)
//!   -> delivery (delivery::maildir, or a send connector later)
//!
//! client (HTTPS) -> proxy front (h1/h2) -> route -> backend pool (proxy)
//! ```
//!
//! `server` wires the parts together; `main.rs` is only the CLI.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod certs;
pub mod config;
pub mod delivery;
pub mod events;
pub mod protolog;
pub mod proxy;
pub mod queue;
pub mod server;
pub mod shutdown;
pub mod smtp;
pub mod timefmt;
pub mod tls;

/// The version printed by `gatehouse --version` and written into logs.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

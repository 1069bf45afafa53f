//! Receive connectors: listeners, the per-connection session, the
//! acceptance policy and the DATA/BDAT receivers.

pub mod command;
pub mod data;
pub mod listener;
pub mod policy;
pub mod session;
pub mod stream;

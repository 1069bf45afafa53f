//! SMTP: the wire protocol shared by the inbound side (and, later, the
//! outbound client): replies, paths, and the receive connectors.

pub mod address;
pub mod inbound;
pub mod outbound;
pub mod reply;

//! Final delivery of queued messages: local Maildirs today, LMTP later.

pub mod maildir;

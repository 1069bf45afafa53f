//! The Windows protocol bitmask codec: Schannel `SP_PROT_*` values as used
//! by WinINet's `SecureProtocols` and WinHTTP's `DefaultSecureProtocols`
//! registry DWORDs (reference exchange-tls.md section 7).
//!
//! Every protocol has two bits in schannel.h: a *server* bit and a *client*
//! bit one place higher. The registry values (and WinHTTP's
//! `WINHTTP_FLAG_SECURE_PROTOCOL_*`) use the client bits only, so
//! TLS 1.0 + 1.1 + 1.2 is `0x80 | 0x200 | 0x800 = 0xA80` (2688).
//!
//! Data path: `parse_value("0xA80")` -> `decode(u32)` -> [`Decoded`]
//! (which protocols, which side, unknown bits left over, warnings, and the
//! correction for the values a widely copied blog post got wrong);
//! `encode("tls1.2,tls1.3")` -> the client-bit DWORD.
//!
//! The blog (seed 004) sets `SecureProtocols = 0xA8` and says `0xA08`
//! "designates TLS 1.0, TLS 1.1, and TLS 1.2". Both are wrong: 0xA8 is
//! SSL 2.0 + SSL 3.0 + TLS 1.0 (the old IE default) and 0xA08 is SSL 2.0 +
//! TLS 1.1 + TLS 1.2. [`seed_correction`] says so whenever it sees them.

use std::fmt;

/// One protocol with its two Schannel bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocol {
    /// `TLS 1.2`.
    pub name: &'static str,
    /// The `encode-protocols` spelling: `tls1.2`.
    pub token: &'static str,
    /// `SP_PROT_*_SERVER`.
    pub server_bit: u32,
    /// `SP_PROT_*_CLIENT`: the bit SecureProtocols/DefaultSecureProtocols use.
    pub client_bit: u32,
    /// Broken or deprecated (RFC 6176 for SSL 2.0, RFC 7568 for SSL 3.0,
    /// RFC 8996 for TLS 1.0 and 1.1).
    pub deprecated: Option<&'static str>,
}

/// Every protocol schannel.h defines, oldest first.
pub const PROTOCOLS: [Protocol; 7] = [
    Protocol {
        name: "PCT 1.0",
        token: "pct1.0",
        server_bit: 0x0001,
        client_bit: 0x0002,
        deprecated: Some("PCT 1.0 is a 1995 Microsoft protocol nothing speaks any more"),
    },
    Protocol {
        name: "SSL 2.0",
        token: "ssl2",
        server_bit: 0x0004,
        client_bit: 0x0008,
        deprecated: Some("SSL 2.0 is prohibited (RFC 6176)"),
    },
    Protocol {
        name: "SSL 3.0",
        token: "ssl3",
        server_bit: 0x0010,
        client_bit: 0x0020,
        deprecated: Some("SSL 3.0 is prohibited (RFC 7568, POODLE)"),
    },
    Protocol {
        name: "TLS 1.0",
        token: "tls1.0",
        server_bit: 0x0040,
        client_bit: 0x0080,
        deprecated: Some("TLS 1.0 is deprecated (RFC 8996); Microsoft 365 refuses it"),
    },
    Protocol {
        name: "TLS 1.1",
        token: "tls1.1",
        server_bit: 0x0100,
        client_bit: 0x0200,
        deprecated: Some("TLS 1.1 is deprecated (RFC 8996); Microsoft 365 refuses it"),
    },
    Protocol {
        name: "TLS 1.2",
        token: "tls1.2",
        server_bit: 0x0400,
        client_bit: 0x0800,
        deprecated: None,
    },
    Protocol {
        name: "TLS 1.3",
        token: "tls1.3",
        server_bit: 0x1000,
        client_bit: 0x2000,
        deprecated: None,
    },
];

/// Which of a protocol's two bits was set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// A decoded DWORD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub value: u32,
    /// Set bits that name a protocol, in bit order.
    pub protocols: Vec<(Protocol, Side)>,
    /// Bits no protocol defines.
    pub unknown: u32,
}

impl Decoded {
    /// Warnings an administrator should act on.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (p, side) in &self.protocols {
            if *side == Side::Server {
                out.push(format!(
                    "0x{:X} is the Schannel server bit of {} (SP_PROT_*_SERVER); SecureProtocols and \
                     DefaultSecureProtocols use the client bit 0x{:X}",
                    p.server_bit, p.name, p.client_bit
                ));
            }
            if let Some(why) = p.deprecated {
                out.push(format!("{} is enabled: {why}", p.name));
            }
        }
        if self.unknown != 0 {
            out.push(format!(
                "bits 0x{:X} name no protocol: a typo in the value?",
                self.unknown
            ));
        }
        if self.value != 0 && !self.protocols.iter().any(|(p, _)| p.deprecated.is_none()) {
            out.push(
                "neither TLS 1.2 nor TLS 1.3 is enabled: Exchange 2019 and Microsoft 365 need TLS 1.2 \
                 (0x800)"
                    .into(),
            );
        }
        if let Some(note) = seed_correction(self.value) {
            out.push(note.to_string());
        }
        out
    }

    /// `TLS 1.0 | TLS 1.1 | TLS 1.2`, or `none`.
    pub fn summary(&self) -> String {
        if self.protocols.is_empty() {
            return "none".into();
        }
        self.protocols
            .iter()
            .map(|(p, side)| match side {
                Side::Client => p.name.to_string(),
                Side::Server => format!("{} (server bit)", p.name),
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

impl fmt::Display for Decoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "0x{:X} ({}) = {}",
            self.value,
            self.value,
            self.summary()
        )?;
        for (p, side) in &self.protocols {
            let (bit, what) = match side {
                Side::Client => (
                    p.client_bit,
                    "client bit (SecureProtocols / DefaultSecureProtocols)",
                ),
                Side::Server => (p.server_bit, "server bit (Schannel only)"),
            };
            writeln!(f, "  0x{bit:04X}  {:<8} {what}", p.name)?;
        }
        if self.unknown != 0 {
            writeln!(f, "  0x{:04X}  unknown bits", self.unknown)?;
        }
        for w in self.warnings() {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

/// Why a value or a protocol list was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolsError {
    #[error(
        "{input:?} is not a number: give a DWORD as hex (0xA80) or decimal (2688), as regedit shows it"
    )]
    BadNumber { input: String },
    #[error("no protocols given: list them like tls1.2,tls1.3")]
    Empty,
    #[error("unknown protocol {name:?}: known are {}", known_tokens())]
    UnknownProtocol { name: String },
}

fn known_tokens() -> String {
    PROTOCOLS
        .iter()
        .map(|p| p.token)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a DWORD as regedit or `reg query` shows it: `0xA80`, `0XA80`,
/// `2688`. A bare hex string like `a80` is refused: it is ambiguous with
/// decimal for values like `800`.
pub fn parse_value(input: &str) -> Result<u32, ProtocolsError> {
    let s = input.trim();
    let bad = || ProtocolsError::BadNumber {
        input: input.to_string(),
    };
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 8 {
            return Err(bad());
        }
        u32::from_str_radix(hex, 16).map_err(|_| bad())
    } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<u32>().map_err(|_| bad())
    } else {
        Err(bad())
    }
}

/// Splits a DWORD into protocols; never fails (unknown bits are kept).
pub fn decode(value: u32) -> Decoded {
    let mut protocols = Vec::new();
    let mut known = 0u32;
    for p in PROTOCOLS {
        if value & p.server_bit != 0 {
            protocols.push((p, Side::Server));
        }
        if value & p.client_bit != 0 {
            protocols.push((p, Side::Client));
        }
        known |= p.server_bit | p.client_bit;
    }
    Decoded {
        value,
        protocols,
        unknown: value & !known,
    }
}

/// The client-bit DWORD for a comma-separated list such as
/// `tls1.2,tls1.3`. Spellings are forgiving (`TLS1.2`, `tls12`, `tls1_2`,
/// `tls1` for 1.0) because operators copy them from many places.
pub fn encode(list: &str) -> Result<u32, ProtocolsError> {
    let mut value = 0u32;
    let mut any = false;
    for raw in list.split(',') {
        let name = raw.trim();
        if name.is_empty() {
            continue;
        }
        let p = find(name).ok_or_else(|| ProtocolsError::UnknownProtocol {
            name: name.to_string(),
        })?;
        value |= p.client_bit;
        any = true;
    }
    if !any {
        return Err(ProtocolsError::Empty);
    }
    Ok(value)
}

fn find(name: &str) -> Option<Protocol> {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| !matches!(c, '.' | '_' | ' ' | '-' | 'v' | 'V'))
            .collect::<String>()
            .to_ascii_lowercase()
    };
    let n = norm(name);
    let n = match n.as_str() {
        "tls1" => "tls10".to_string(),
        "ssl20" => "ssl2".to_string(),
        "ssl30" => "ssl3".to_string(),
        "pct1" => "pct10".to_string(),
        _ => n,
    };
    PROTOCOLS.into_iter().find(|p| norm(p.token) == n)
}

/// The correction for values copied from the seed blog post (exchange-tls.md
/// section 7), or `None` for any other value.
pub fn seed_correction(value: u32) -> Option<&'static str> {
    match value {
        0xA8 => Some(
            "0xA8 is SSL 2.0 + SSL 3.0 + TLS 1.0 (the legacy IE default), not TLS 1.0-1.2 as a widely \
             copied blog post says; for TLS 1.0 + 1.1 + 1.2 use 0xA80 (2688), for TLS 1.2 only 0x800, \
             for TLS 1.2 + 1.3 0x2800",
        ),
        0xA08 => Some(
            "0xA08 is SSL 2.0 + TLS 1.1 + TLS 1.2, a nonsensical mix: the blog post that says it means \
             TLS 1.0-1.2 has a typo for 0xA80 (TLS 1.0 + 1.1 + 1.2) or 0xA00 (TLS 1.1 + 1.2); for \
             TLS 1.2 + 1.3 use 0x2800",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_values() {
        assert_eq!(encode("tls1.0,tls1.1,tls1.2"), Ok(0xA80));
        assert_eq!(encode("tls1.1,tls1.2"), Ok(0xA00));
        assert_eq!(encode("tls1.2,tls1.3"), Ok(0x2800));
        assert_eq!(encode("TLS1.2"), Ok(0x800));
        assert_eq!(encode("tls1, tls12"), Ok(0x880));
        assert_eq!(parse_value("2688"), Ok(0xA80));
        assert_eq!(parse_value("0XA80"), Ok(0xA80));
    }

    #[test]
    fn bad_input_is_refused_precisely() {
        for bad in ["", "0x", "a80", "0xZZ", "0x123456789", "99999999999", "-1"] {
            assert!(
                matches!(parse_value(bad), Err(ProtocolsError::BadNumber { .. })),
                "{bad}"
            );
        }
        assert_eq!(encode(" , "), Err(ProtocolsError::Empty));
        assert!(matches!(
            encode("tls1.2,tls9"),
            Err(ProtocolsError::UnknownProtocol { name }) if name == "tls9"
        ));
    }

    #[test]
    fn seed_values_are_corrected() {
        let d = decode(0xA8);
        assert_eq!(d.summary(), "SSL 2.0 | SSL 3.0 | TLS 1.0");
        assert!(d.warnings().iter().any(|w| w.contains("use 0xA80")));
        let d = decode(0xA08);
        assert_eq!(d.summary(), "SSL 2.0 | TLS 1.1 | TLS 1.2");
        assert!(d.warnings().iter().any(|w| w.contains("typo")));
        assert!(seed_correction(0xA80).is_none());
    }
}

//! Legacy protocol detection: a hand-built ClientHello for SSL 3.0,
//! TLS 1.0, TLS 1.1 or a CBC-only TLS 1.2, and a reader for the server's
//! first answer.
//!
//! rustls cannot speak anything older than TLS 1.2, so to learn whether a
//! server still *accepts* TLS 1.0/1.1 we write the ClientHello ourselves
//! (RFC 2246 7.4.1.2, RFC 4346 7.4.1.2, RFC 6101 5.6.1.2) and read only
//! the ServerHello: a server that answers with a ServerHello carrying the
//! version we offered has agreed to speak it. No key exchange follows; we
//! close the connection after the first answer.
//!
//! The TLS 1.2 variant exists for servers (Windows 2008 R2-era Exchange,
//! old appliances) whose TLS 1.2 has only CBC or RSA-key-exchange suites,
//! which rustls does not implement: without it the doctor would call such
//! a server "no TLS 1.2" when the truth is "TLS 1.2 with suites modern
//! clients refuse".
//!
//! The hello offers the suites such servers actually pick (ECDHE/DHE/RSA
//! with AES-CBC, 3DES, RC4) and, from TLS 1.0 on, the extensions OpenSSL
//! needs to choose an ECDHE suite (RFC 4492 supported_groups and
//! ec_point_formats) plus SNI (RFC 6066 3). It never carries
//! TLS_FALLBACK_SCSV (RFC 7507): that would make a modern server refuse
//! with inappropriate_fallback even when it still allows the version.
//!
//! Reading is bounded: at most [`MAX_RECORD`] bytes per record and
//! [`MAX_RECORDS`] records before the ServerHello must be complete.

use tokio::io::{AsyncRead, AsyncReadExt};

/// A legacy version we can offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegacyVersion {
    Ssl3,
    Tls10,
    Tls11,
    /// TLS 1.2 with CBC and RSA-key-exchange suites only.
    Tls12Legacy,
}

impl LegacyVersion {
    /// The wire value (RFC 2246 6.2.1 `ProtocolVersion`).
    pub fn wire(self) -> u16 {
        match self {
            LegacyVersion::Ssl3 => 0x0300,
            LegacyVersion::Tls10 => 0x0301,
            LegacyVersion::Tls11 => 0x0302,
            LegacyVersion::Tls12Legacy => 0x0303,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LegacyVersion::Ssl3 => "SSL 3.0",
            LegacyVersion::Tls10 => "TLS 1.0",
            LegacyVersion::Tls11 => "TLS 1.1",
            LegacyVersion::Tls12Legacy => "TLS 1.2",
        }
    }
}

/// The largest TLSCiphertext fragment (RFC 5246 6.2.3: 2^14 + 2048).
pub const MAX_RECORD: usize = 16_384 + 2048;
/// Records we read before giving up on a ServerHello.
pub const MAX_RECORDS: usize = 4;

/// CBC/3DES/RC4 suites servers that still speak TLS 1.0 choose from,
/// ending with TLS_EMPTY_RENEGOTIATION_INFO_SCSV (RFC 5746 3.3).
const SUITES: [u16; 11] = [
    0xc014, // ECDHE-RSA-AES256-SHA
    0xc013, // ECDHE-RSA-AES128-SHA
    0xc00a, // ECDHE-ECDSA-AES256-SHA
    0xc009, // ECDHE-ECDSA-AES128-SHA
    0x0039, // DHE-RSA-AES256-SHA
    0x0033, // DHE-RSA-AES128-SHA
    0x0035, // AES256-SHA
    0x002f, // AES128-SHA
    0x000a, // DES-CBC3-SHA
    0x0005, // RC4-SHA
    0x00ff, // TLS_EMPTY_RENEGOTIATION_INFO_SCSV
];

/// Suites a TLS 1.2 server may have that rustls lacks: CBC with SHA-256
/// and RSA key exchange with GCM (no forward secrecy).
const TLS12_EXTRA_SUITES: [u16; 8] = [
    0xc028, // ECDHE-RSA-AES256-SHA384
    0xc027, // ECDHE-RSA-AES128-SHA256
    0xc024, // ECDHE-ECDSA-AES256-SHA384
    0xc023, // ECDHE-ECDSA-AES128-SHA256
    0x009d, // AES256-GCM-SHA384 (RSA key exchange)
    0x009c, // AES128-GCM-SHA256 (RSA key exchange)
    0x003d, // AES256-SHA256
    0x003c, // AES128-SHA256
];

/// Builds a complete handshake record holding a ClientHello that offers
/// exactly `version`. `sni` is sent from TLS 1.0 on when it is a DNS
/// name (RFC 6066 3 forbids IP literals).
pub fn client_hello(version: LegacyVersion, sni: Option<&str>, random: [u8; 32]) -> Vec<u8> {
    let mut body = Vec::with_capacity(128);
    body.extend_from_slice(&version.wire().to_be_bytes());
    body.extend_from_slice(&random);
    body.push(0); // empty session id
    let suites: &[u16] = if version == LegacyVersion::Tls12Legacy {
        &TLS12_EXTRA_SUITES
    } else {
        &[]
    };
    put_u16(&mut body, ((SUITES.len() + suites.len()) * 2) as u16);
    for s in suites.iter().chain(SUITES.iter()) {
        put_u16(&mut body, *s);
    }
    body.extend_from_slice(&[1, 0]); // compression methods: null
    if version != LegacyVersion::Ssl3 {
        let mut ext = Vec::new();
        if let Some(name) = sni.filter(|n| n.parse::<std::net::IpAddr>().is_err() && n.len() < 256)
        {
            // server_name: list length, type host_name (0), name length.
            let n = name.as_bytes();
            put_u16(&mut ext, 0x0000);
            put_u16(&mut ext, (n.len() + 5) as u16);
            put_u16(&mut ext, (n.len() + 3) as u16);
            ext.push(0);
            put_u16(&mut ext, n.len() as u16);
            ext.extend_from_slice(n);
        }
        // supported_groups: x25519, secp256r1, secp384r1.
        ext.extend_from_slice(&[
            0x00, 0x0a, 0x00, 0x08, 0x00, 0x06, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18,
        ]);
        // ec_point_formats: uncompressed.
        ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
        if version == LegacyVersion::Tls12Legacy {
            // signature_algorithms (RFC 5246 7.4.1.4.1): without it a TLS 1.2
            // server must assume SHA-1, which some refuse.
            ext.extend_from_slice(&[
                0x00, 0x0d, 0x00, 0x0c, 0x00, 0x0a, 0x04, 0x01, 0x04, 0x03, 0x08, 0x04, 0x02, 0x01,
                0x02, 0x03,
            ]);
        }
        put_u16(&mut body, ext.len() as u16);
        body.extend_from_slice(&ext);
    }
    let mut hs = Vec::with_capacity(body.len() + 4);
    hs.push(1); // client_hello
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = Vec::with_capacity(hs.len() + 5);
    rec.push(0x16);
    // The record version of a first hello: SSL 3.0 for SSL 3.0, TLS 1.0
    // otherwise (RFC 5246 appendix E.1).
    let record_version: u16 = if version == LegacyVersion::Ssl3 {
        0x0300
    } else {
        0x0301
    };
    put_u16(&mut rec, record_version);
    put_u16(&mut rec, hs.len() as u16);
    rec.extend_from_slice(&hs);
    rec
}

fn put_u16(v: &mut Vec<u8>, n: u16) {
    v.extend_from_slice(&n.to_be_bytes());
}

/// The server's first answer to a legacy ClientHello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LegacyAnswer {
    /// A ServerHello: the server chose `version` and `cipher`.
    ServerHello { version: u16, cipher: u16 },
    /// A TLS alert (RFC 5246 7.2), usually handshake_failure (40) or
    /// protocol_version (70): the version is refused.
    Alert { level: u8, description: u8 },
    /// The connection closed without a TLS answer.
    Closed,
    /// Bytes that are not TLS (an SMTP or HTTP reply, SSLv2, garbage).
    NotTls { first_bytes: Vec<u8> },
}

impl LegacyAnswer {
    /// Whether this answer means the server accepts `offered`.
    pub fn accepts(&self, offered: LegacyVersion) -> bool {
        matches!(self, LegacyAnswer::ServerHello { version, .. } if *version == offered.wire())
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        match self {
            LegacyAnswer::ServerHello { version, cipher } => format!(
                "ServerHello {} with suite 0x{cipher:04X}",
                version_name(*version)
            ),
            LegacyAnswer::Alert { level, description } => format!(
                "{} alert {} ({description})",
                if *level == 2 { "fatal" } else { "warning" },
                alert_name(*description)
            ),
            LegacyAnswer::Closed => "connection closed without a TLS answer".into(),
            LegacyAnswer::NotTls { first_bytes } => format!(
                "answer is not TLS: {:?}",
                String::from_utf8_lossy(first_bytes)
            ),
        }
    }
}

/// `TLS 1.2`, `SSL 3.0`, or the hex value.
pub fn version_name(v: u16) -> String {
    match v {
        0x0300 => "SSL 3.0".into(),
        0x0301 => "TLS 1.0".into(),
        0x0302 => "TLS 1.1".into(),
        0x0303 => "TLS 1.2".into(),
        0x0304 => "TLS 1.3".into(),
        other => format!("version 0x{other:04X}"),
    }
}

/// RFC 5246 7.2 / RFC 8446 6 alert names.
pub fn alert_name(d: u8) -> &'static str {
    match d {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        22 => "record_overflow",
        40 => "handshake_failure",
        42 => "bad_certificate",
        47 => "illegal_parameter",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        109 => "missing_extension",
        112 => "unrecognized_name",
        _ => "unknown alert",
    }
}

/// Parses the start of a ServerHello from handshake bytes (records
/// already unwrapped). `Ok(None)`: need more bytes.
pub fn parse_server_hello(hs: &[u8]) -> Result<Option<(u16, u16)>, String> {
    let Some(&msg_type) = hs.first() else {
        return Ok(None);
    };
    if msg_type != 2 {
        return Err(format!(
            "expected ServerHello (2), got handshake message type {msg_type}"
        ));
    }
    // type(1) length(3) version(2) random(32) session_id_len(1).
    let Some(sid_len) = hs.get(38) else {
        return Ok(None);
    };
    let sid_len = usize::from(*sid_len);
    if sid_len > 32 {
        return Err(format!("session id of {sid_len} bytes (at most 32)"));
    }
    let (Some(v), Some(c)) = (hs.get(4..6), hs.get(39 + sid_len..41 + sid_len)) else {
        return Ok(None);
    };
    Ok(Some((
        u16::from_be_bytes([v[0], v[1]]),
        u16::from_be_bytes([c[0], c[1]]),
    )))
}

/// Reads the server's answer (the caller bounds it with a timeout).
pub async fn read_answer<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<LegacyAnswer> {
    let mut handshake = Vec::new();
    for _ in 0..MAX_RECORDS {
        let mut header = [0u8; 5];
        let mut got = 0;
        while got < header.len() {
            let n = r.read(&mut header[got..]).await?;
            if n == 0 {
                return Ok(if got == 0 {
                    LegacyAnswer::Closed
                } else {
                    LegacyAnswer::NotTls {
                        first_bytes: header[..got].to_vec(),
                    }
                });
            }
            got += n;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let content_type = header[0];
        if !matches!(content_type, 0x15 | 0x16) || header[1] != 3 || len == 0 || len > MAX_RECORD {
            return Ok(LegacyAnswer::NotTls {
                first_bytes: header.to_vec(),
            });
        }
        let mut body = vec![0u8; len];
        if let Err(e) = r.read_exact(&mut body).await {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                return Ok(LegacyAnswer::Closed);
            }
            return Err(e);
        }
        if content_type == 0x15 {
            return Ok(match (body.first(), body.get(1)) {
                (Some(&level), Some(&description)) => LegacyAnswer::Alert { level, description },
                _ => LegacyAnswer::NotTls {
                    first_bytes: header.to_vec(),
                },
            });
        }
        handshake.extend_from_slice(&body);
        match parse_server_hello(&handshake) {
            Ok(Some((version, cipher))) => {
                return Ok(LegacyAnswer::ServerHello { version, cipher });
            }
            Ok(None) => continue,
            Err(_) => {
                return Ok(LegacyAnswer::NotTls {
                    first_bytes: handshake.iter().take(16).copied().collect(),
                });
            }
        }
    }
    Ok(LegacyAnswer::NotTls {
        first_bytes: handshake.iter().take(16).copied().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a server sends, the reader answers without panicking
        /// and without reading past its bounds.
        #[test]
        fn any_answer_bytes_are_handled(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_server_hello(&bytes);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut r: &[u8] = &bytes;
            let answer = rt.block_on(read_answer(&mut r)).unwrap();
            if let LegacyAnswer::ServerHello { .. } = answer {
                prop_assert!(bytes.len() >= 5 + 41);
            }
        }
    }

    #[test]
    fn hello_lengths_are_consistent() {
        for v in [
            LegacyVersion::Ssl3,
            LegacyVersion::Tls10,
            LegacyVersion::Tls11,
            LegacyVersion::Tls12Legacy,
        ] {
            let rec = client_hello(v, Some("mx.example.test"), [7; 32]);
            let rec_len = usize::from(u16::from_be_bytes([rec[3], rec[4]]));
            assert_eq!(rec.len(), rec_len + 5);
            let hs_len = u32::from_be_bytes([0, rec[6], rec[7], rec[8]]) as usize;
            assert_eq!(hs_len + 4, rec_len);
            assert_eq!(u16::from_be_bytes([rec[9], rec[10]]), v.wire());
            let has_sni = rec.windows(15).any(|w| w == b"mx.example.test");
            assert_eq!(has_sni, v != LegacyVersion::Ssl3);
        }
        let rec = client_hello(LegacyVersion::Tls10, Some("127.0.0.1"), [7; 32]);
        assert!(
            !rec.windows(9).any(|w| w == b"127.0.0.1"),
            "no SNI for IP literals"
        );
    }

    #[test]
    fn server_hello_parser_handles_short_and_bad_input() {
        assert_eq!(parse_server_hello(&[]), Ok(None));
        assert_eq!(parse_server_hello(&[2, 0, 0]), Ok(None));
        assert!(parse_server_hello(&[11, 0, 0, 0]).is_err());
        let mut sh = vec![2, 0, 0, 42, 3, 1];
        sh.extend_from_slice(&[0; 32]);
        sh.push(40);
        assert!(parse_server_hello(&sh).is_err(), "session id too long");
        sh.pop();
        sh.extend_from_slice(&[0, 0xc0, 0x14, 0]);
        assert_eq!(parse_server_hello(&sh), Ok(Some((0x0301, 0xc014))));
    }
}

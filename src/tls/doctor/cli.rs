//! `gatehouse tls probe | decode-protocols | encode-protocols`.
//!
//! Exit codes: 0 every check passed (warnings allowed), 1 a check failed,
//! 2 the command line was wrong (bad URL, unreadable --ca-file, a value
//! that is not a number), like clap's own usage errors.

use super::{Options, Target};
use crate::tls::protocols;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum TlsCommand {
    /// Probe a server's TLS: versions offered (including TLS 1.0/1.1 via hand-built hellos),
    /// suite, chain, trust, expiry, name, msstd, resumption, STARTTLS. Exit 1 if a check fails.
    Probe {
        /// smtp://HOST[:25] (STARTTLS), smtps://HOST[:465] or https://HOST[:443].
        target: String,
        /// The name the certificate must be valid for (also sent as SNI). Default: the host.
        #[arg(long, value_name = "NAME")]
        expect_name: Option<String>,
        /// Check Outlook's certificate principal name, e.g. msstd:mail.example.com.
        #[arg(long, value_name = "msstd:NAME")]
        msstd: Option<String>,
        /// Extra trusted CA certificates (PEM), on top of the bundled Mozilla roots.
        #[arg(long, value_name = "PEM")]
        ca_file: Option<PathBuf>,
        /// Seconds allowed for each step (connect, greeting, EHLO, STARTTLS, handshake).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
        timeout: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Decode a Windows SecureProtocols / DefaultSecureProtocols DWORD (0xA80 or 2688).
    DecodeProtocols {
        /// The DWORD, hex with 0x or decimal.
        value: String,
    },
    /// Encode protocols (tls1.0, tls1.1, tls1.2, tls1.3, ssl3, ssl2) as a SecureProtocols DWORD.
    EncodeProtocols {
        /// Comma-separated list, e.g. tls1.2,tls1.3.
        protocols: String,
    },
}

impl TlsCommand {
    /// Runs the command, printing to `out` (errors to stderr); returns the
    /// exit code.
    pub fn run(self, out: &mut dyn Write) -> u8 {
        match self.execute(out) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("gatehouse: {e}");
                2
            }
        }
    }

    fn execute(self, out: &mut dyn Write) -> anyhow::Result<u8> {
        match self {
            TlsCommand::Probe {
                target,
                expect_name,
                msstd,
                ca_file,
                timeout,
                json,
            } => {
                let target: Target = target.parse()?;
                let opts = Options {
                    target,
                    expect_name,
                    msstd,
                    ca_file,
                    timeout_secs: timeout,
                };
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let report = runtime.block_on(super::probe(&opts))?;
                if json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
                } else {
                    write!(out, "{report}")?;
                }
                Ok(report.exit_code())
            }
            TlsCommand::DecodeProtocols { value } => {
                let v = protocols::parse_value(&value)?;
                write!(out, "{}", protocols::decode(v))?;
                Ok(0)
            }
            TlsCommand::EncodeProtocols { protocols: list } => {
                let v = protocols::encode(&list)?;
                writeln!(out, "0x{v:X} ({v}) = {}", protocols::decode(v).summary())?;
                writeln!(
                    out,
                    "for HKLM\\...\\Internet Settings\\WinHttp DefaultSecureProtocols or Internet Settings SecureProtocols (REG_DWORD)"
                )?;
                Ok(0)
            }
        }
    }
}

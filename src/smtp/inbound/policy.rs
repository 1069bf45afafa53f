//! Who may send mail to whom: accepted domains, local mailboxes and relay
//! permission (SPEC 2.1 "Acceptance policy").
//!
//! Decision order for a recipient:
//! 1. Local parts with `%`, `!` or `@` are refused (550 5.7.1): they only
//!    exist to make a later hop route the mail somewhere else.
//! 2. Authoritative domain: exact address, then the `@domain` catch-all;
//!    otherwise 550 5.1.1.
//! 3. Relay domain: accepted for anyone and queued for onward delivery.
//! 4. Anything else (other domains, IP literals): accepted only from the
//!    connector's `relay_networks` or an authenticated client; otherwise
//!    550 5.7.1.
//!
//! `<Postmaster>` without a domain goes to postmaster at the server's host
//! name or at the first authoritative domain (RFC 5321 §4.5.1).

use crate::config::{Cidr, Config, DeliveryMethod, DomainType};
use crate::queue::message::Route;
use crate::smtp::address::{Domain, Mailbox, Path};
use crate::smtp::reply::Reply;
use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Debug)]
pub struct AcceptancePolicy {
    domains: HashMap<String, DomainType>,
    /// `local@domain` or `@domain` (lower case) → mailbox.
    addresses: HashMap<String, (String, bool)>,
    postmaster_keys: Vec<String>,
}

impl AcceptancePolicy {
    pub fn from_config(cfg: &Config) -> Self {
        let domains = cfg
            .accepted_domain
            .iter()
            .map(|d| (d.domain.get_ref().to_string(), d.kind))
            .collect();
        let mut addresses = HashMap::new();
        for m in &cfg.mailbox {
            for a in &m.addresses {
                addresses.insert(
                    a.get_ref().to_lowercase(),
                    (
                        m.name.get_ref().clone(),
                        m.delivery == DeliveryMethod::Discard,
                    ),
                );
            }
        }
        let mut postmaster_keys = vec![format!("postmaster@{}", cfg.server.hostname.get_ref())];
        postmaster_keys.extend(
            cfg.accepted_domain
                .iter()
                .filter(|d| d.kind == DomainType::Authoritative)
                .map(|d| format!("postmaster@{}", d.domain.get_ref())),
        );
        AcceptancePolicy {
            domains,
            addresses,
            postmaster_keys,
        }
    }

    fn local(&self, key: &str, domain: &str) -> Option<Route> {
        self.addresses
            .get(key)
            .or_else(|| self.addresses.get(&format!("@{domain}")))
            .map(|(name, discard)| Route::Mailbox {
                name: name.clone(),
                discard: *discard,
            })
    }

    /// Decides on one RCPT TO path.
    pub fn recipient(
        &self,
        path: &Path,
        client: IpAddr,
        relay_networks: &[Cidr],
        authenticated: bool,
    ) -> Result<(String, Route), Reply> {
        let mailbox: &Mailbox = match path {
            Path::Null => {
                return Err(Reply::bad_recipient_syntax(
                    "the null path <> is not a recipient",
                ));
            }
            Path::Postmaster => {
                for key in &self.postmaster_keys {
                    let domain = key.split_once('@').map(|x| x.1).unwrap_or_default();
                    if self.domains.get(domain) == Some(&DomainType::Authoritative)
                        && let Some(route) = self.local(key, domain)
                    {
                        return Ok((key.clone(), route));
                    }
                }
                return Err(Reply::unknown_user("postmaster"));
            }
            Path::Mailbox(m) => m,
        };
        if mailbox.has_routing_chars() {
            return Err(Reply::routing_characters());
        }
        let relay_allowed = authenticated || relay_networks.iter().any(|n| n.contains(client));
        match &mailbox.domain {
            Domain::Name(d) => match self.domains.get(d.as_str()) {
                Some(DomainType::Authoritative) => self
                    .local(&mailbox.lookup_key(), d)
                    .map(|r| (mailbox.to_string(), r))
                    .ok_or_else(|| Reply::unknown_user(&mailbox.to_string())),
                Some(DomainType::Relay) => {
                    Ok((mailbox.to_string(), Route::Relay { domain: d.clone() }))
                }
                None if relay_allowed => {
                    Ok((mailbox.to_string(), Route::Relay { domain: d.clone() }))
                }
                None => Err(Reply::relay_denied(d, &client.to_string())),
            },
            Domain::Literal(l) if relay_allowed => Ok((
                mailbox.to_string(),
                Route::Relay {
                    domain: format!("[{l}]"),
                },
            )),
            Domain::Literal(l) => Err(Reply::relay_denied(&format!("[{l}]"), &client.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSource;
    use crate::smtp::address::parse_path;

    fn policy() -> AcceptancePolicy {
        let text = format!(
            "{}\n[[accepted_domain]]\ndomain = \"relay.test\"\ntype = \"relay\"\n",
            crate::config::DEFAULT_CONFIG
        );
        let cfg = Config::from_source(&ConfigSource {
            name: "t".into(),
            text,
        })
        .unwrap();
        AcceptancePolicy::from_config(&cfg)
    }
    fn decide(p: &AcceptancePolicy, addr: &str, nets: &[Cidr]) -> Result<(String, Route), Reply> {
        p.recipient(
            &parse_path(addr, false).unwrap(),
            "127.0.0.1".parse().unwrap(),
            nets,
            false,
        )
    }

    #[test]
    fn catch_all_takes_any_local_part() {
        let (_, r) = decide(&policy(), "<Anyone@Example.Test>", &[]).unwrap();
        assert_eq!(
            r,
            Route::Mailbox {
                name: "catchall".into(),
                discard: false
            }
        );
    }

    #[test]
    fn foreign_domain_is_denied_even_from_loopback() {
        let e = decide(&policy(), "<x@elsewhere.test>", &[]).unwrap_err();
        assert_eq!((e.code, e.status), (550, Some("5.7.1")));
        let e = decide(&policy(), "<x@[127.0.0.1]>", &[]).unwrap_err();
        assert_eq!(e.code, 550);
    }

    #[test]
    fn relay_networks_may_relay() {
        let nets = ["127.0.0.0/8".parse().unwrap()];
        assert!(matches!(
            decide(&policy(), "<x@elsewhere.test>", &nets),
            Ok((_, Route::Relay { .. }))
        ));
    }

    #[test]
    fn relay_domain_is_accepted_for_anyone() {
        assert!(matches!(
            decide(&policy(), "<x@relay.test>", &[]),
            Ok((_, Route::Relay { .. }))
        ));
    }

    #[test]
    fn routing_tricks_are_refused() {
        for a in [
            "<x%elsewhere.test@example.test>",
            "<elsewhere.test!x@example.test>",
            "<\"x@elsewhere.test\"@example.test>",
        ] {
            let e = decide(&policy(), a, &[]).unwrap_err();
            assert_eq!((e.code, e.status), (550, Some("5.7.1")), "{a}");
        }
    }

    #[test]
    fn bare_postmaster_is_accepted() {
        assert!(decide(&policy(), "<postmaster>", &[]).is_ok());
    }
}

//! Path-prefix routes, matched like Exchange virtual directories:
//! case-insensitively, on whole path segments (`/owa` matches `/owa`,
//! `/OWA/` and `/owa/x`, not `/owax`), longest prefix first.

use super::pool::Pool;
use std::sync::Arc;

pub struct Route {
    /// Lower-case, without a trailing slash (`/` stays `/`).
    pub prefix: String,
    pub pool: Arc<Pool>,
    pub max_body_size: u64,
    /// The HttpProxy log's Protocol column (`Owa`, `RpcHttp`, ...).
    pub protocol: Arc<str>,
}

pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<Route>) -> RouteTable {
        for r in &mut routes {
            r.prefix = normalize(&r.prefix);
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        RouteTable { routes }
    }

    pub fn find(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| matches(&r.prefix, path))
    }
}

fn normalize(prefix: &str) -> String {
    let p = prefix.trim_end_matches('/').to_ascii_lowercase();
    if p.is_empty() { "/".into() } else { p }
}

fn matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let Some(head) = path.get(..prefix.len()) else {
        return false;
    };
    head.eq_ignore_ascii_case(prefix)
        && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

/// The log's Protocol name for a prefix, as Exchange's HttpProxy folders
/// name them.
pub fn protocol_name(prefix: &str) -> String {
    match normalize(prefix).as_str() {
        "/owa" => "Owa",
        "/ecp" => "Ecp",
        "/ews" => "Ews",
        "/mapi" => "Mapi",
        "/rpc" => "RpcHttp",
        "/autodiscover" => "Autodiscover",
        "/microsoft-server-activesync" => "Eas",
        "/oab" => "Oab",
        "/powershell" => "PowerShell",
        other => return other.trim_start_matches('/').to_string(),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_match_is_case_insensitive() {
        assert!(matches("/owa", "/OWA"));
        assert!(matches("/owa", "/owa/"));
        assert!(matches("/owa", "/Owa/auth/logon.aspx"));
        assert!(!matches("/owa", "/owax"));
        assert!(!matches("/owa", "/ow"));
        assert!(matches("/", "/anything"));
        assert!(matches(
            "/microsoft-server-activesync",
            "/Microsoft-Server-ActiveSync"
        ));
        assert!(!matches(
            "/microsoft-server-activesync",
            "/Microsoft-Server-ActiveSyncX"
        ));
        assert_eq!(protocol_name("/RPC/"), "RpcHttp");
    }
}

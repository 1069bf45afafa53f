//! The catalog table. ID ranges: 1000-1099 Certificates, 1100-1199 Tls,
//! 1200-1299 SmtpReceive, 2000-2199 SmtpSend/Queue/Delivery, 3000-3099
//! Acme, 4000-4099 Proxy, 5000-5099 Config, 6000-6099 Admin.
//!
//! `exchange` lists the familiar MSExchangeTransport events, closest
//! first (`events explain 12014` finds CertificateFallback).
//! `verbosity` is the category level at which the event starts to show
//! (see the module above); `key` names the fields that make two
//! occurrences "the same" for rate limiting.

catalog! {
    /// First start with TLS listeners and an empty store.
    DefaultCertificateCreated<'a> {
        id: 1001,
        category: Certificates,
        level: Information,
        verbosity: Lowest,
        exchange: [],
        fields: { thumbprint: &'a str, hostname: &'a str },
        key: [thumbprint],
        message: "created the self-signed default certificate {thumbprint} for {hostname}, enabled for smtp and https",
        explanation: "At first start with a TLS listener and an empty certificate store, Gatehouse creates a self-signed certificate so STARTTLS works at once. Peers that verify certificates will not trust it.",
        action: "Import a CA-issued certificate for the host name (`gatehouse cert import`) and enable it for smtp (`gatehouse cert enable THUMBPRINT --services smtp`).",
    }

    /// A certificate in the store cannot be used.
    CertificateUnusable<'a> {
        id: 1013,
        category: Certificates,
        level: Error,
        verbosity: Lowest,
        exchange: [12013],
        fields: { thumbprint: &'a str, reason: &'a str },
        key: [thumbprint],
        message: "certificate {thumbprint} cannot be used: {reason}",
        explanation: "A certificate in the store could not be loaded: its key is missing or unreadable, does not match the certificate, or the file is damaged. Connectors that wanted it use another certificate (see CertificateFallback).",
        action: "Re-import the certificate with its private key (`gatehouse cert import`), or remove it (`gatehouse cert remove THUMBPRINT`).",
    }

    /// An enabled certificate has expired.
    CertificateExpired<'a> {
        id: 1016,
        category: Certificates,
        level: Error,
        verbosity: Lowest,
        exchange: [12016, 12015],
        fields: { thumbprint: &'a str, subject: &'a str },
        key: [thumbprint],
        message: "certificate {thumbprint} ({subject}) expired; it is no longer selected",
        explanation: "An enabled certificate is past its notAfter date. Unlike Exchange, Gatehouse no longer selects it; another valid certificate or the ephemeral fallback is used, which verifying peers will refuse.",
        action: "Import a renewed certificate and enable it; it applies to new handshakes without a restart.",
    }

    /// An enabled certificate expires within 30 days.
    CertificateExpiresSoon<'a> {
        id: 1018,
        category: Certificates,
        level: Warning,
        verbosity: Lowest,
        exchange: [12018, 12017],
        fields: { thumbprint: &'a str, subject: &'a str, days: i64 },
        key: [thumbprint, days],
        message: "certificate {thumbprint} ({subject}) expires in {days} day(s)",
        explanation: "An enabled certificate is close to its notAfter date (warnings at 30, 14, 7 and 1 days). After it expires, TLS falls back to another certificate.",
        action: "Renew the certificate and import the new one (`gatehouse cert import`); it takes effect without a restart.",
    }

    /// TLS is offered with another certificate than the one wanted.
    CertificateFallback<'a> {
        id: 1024,
        category: Certificates,
        level: Error,
        verbosity: Lowest,
        exchange: [12024, 12014, 12023],
        fields: { connector: &'a str, detail: &'a str, used: &'a str },
        key: [connector, used],
        message: "connector `{connector}`: {detail}; using {used} instead",
        explanation: "The certificate the connector should present could not be used, so TLS is offered with another one, possibly the ephemeral self-signed certificate. Clients that verify the name or the chain will fail; opportunistic peers still encrypt.",
        action: "Fix the reason given (missing or unreadable key, key not matching, expired, no certificate for the FQDN) or enable another certificate; `gatehouse cert which --connector NAME` shows the choice.",
    }

    /// The store changed on disk and was reloaded.
    CertificatesReloaded {
        id: 1030,
        category: Certificates,
        level: Information,
        verbosity: Low,
        exchange: [],
        fields: { usable: usize, unusable: usize },
        key: [],
        message: "certificate store reloaded: {usable} usable, {unusable} unusable",
        explanation: "The certificate store changed (import, enable, remove or a file replaced on disk) and was read again. New handshakes use the new state; open sessions keep theirs.",
        action: "None if the change was intended; check CertificateUnusable events otherwise.",
    }

    /// One inbound TLS handshake failed.
    TlsHandshakeFailed<'a> {
        id: 1101,
        category: Tls,
        level: Warning,
        verbosity: Medium,
        exchange: [],
        fields: { connector: &'a str, client: std::net::IpAddr, reason: &'a str },
        key: [connector, reason],
        message: "connector `{connector}`: TLS handshake with {client} failed: {reason}",
        explanation: "A client started TLS (STARTTLS or port 465) and the handshake did not complete. A few are normal (scanners, clients that give up); many with the same reason point at a policy mismatch, for example clients that only speak TLS 1.0/1.1.",
        action: "Look at the reason: `protocol version` means the client offers only TLS versions we refuse (upgrade the client); `no shared parameters` means no common cipher or key type; repeated timeouts can be a middlebox. `gatehouse tls probe` shows what we offer.",
    }

    /// Repeated AUTH failures locked an address out.
    AuthLockedOut<'a> {
        id: 1202,
        category: SmtpReceive,
        level: Warning,
        verbosity: Lowest,
        exchange: [],
        fields: { connector: &'a str, client: std::net::IpAddr, failures: u32, minutes: u64 },
        key: [client],
        message: "connector `{connector}`: {failures} failed AUTH attempts from {client}; its AUTH is refused with 454 4.7.0 for {minutes} minute(s)",
        explanation: "An address (for IPv6 its /64) failed AUTH `lockout_threshold` times within `lockout_window`, across sessions and connectors: typical of password guessing. Until the lockout ends, its AUTH is refused before any password is checked.",
        action: "If the address is a legitimate client with a stale password, fix the password in the client; the lockout ends by itself. If it is an attacker, consider blocking it at the firewall. Tune [auth] lockout_threshold / lockout_window / lockout_duration.",
    }

    /// Mail for a relay domain has no [[send_connector]] whose address_spaces match it.
    NoSendConnector<'a> {
        id: 2001,
        category: SmtpSend,
        level: Warning,
        verbosity: Low,
        exchange: [],
        fields: { detail: &'a str },
        key: [detail],
        message: "no send connector matches the destination: {detail}",
        explanation: "Mail for a relay domain has no [[send_connector]] whose address_spaces match it. It stays queued and is retried (4.4.0) until it expires. Add a send connector for the domain (or \"*\").",
        action: "Add a [[send_connector]] whose address_spaces match the domain (or \"*\"), then restart Gatehouse (send connector changes need a restart); the waiting mail is tried again at start.",
    }

    /// No host of the destination could be used (connection refused, timed out, or the peer refused the session).
    OutboundConnectionFailed<'a> {
        id: 2002,
        category: SmtpSend,
        level: Warning,
        verbosity: Low,
        exchange: [1035],
        fields: { detail: &'a str },
        key: [detail],
        message: "no host of the destination could take the mail: {detail}",
        explanation: "No host of the destination could be used (connection refused, timed out, or the peer refused the session). The messages are retried with backoff; check the destination's MX or smart host and the network path.",
        action: "Check the destination's MX records or the smart host (`gatehouse tls probe smtp://HOST:25`), and the network path (firewall, port 25 blocked by the provider). The mail is retried by itself; `gatehouse queue list --destination D` shows what waits.",
    }

    /// The connector's TLS level could not be met (STARTTLS not offered, handshake failed, untrusted chain, wrong name or unpinned certificate).
    OutboundTlsFailed<'a> {
        id: 2003,
        category: SmtpSend,
        level: Warning,
        verbosity: Lowest,
        exchange: [12023],
        fields: { detail: &'a str },
        key: [detail],
        message: "the send connector's TLS level was not met: {detail}",
        explanation: "The connector's TLS level could not be met (STARTTLS not offered, handshake failed, untrusted chain, wrong name or unpinned certificate). Mail is not sent over this host and is retried. Fix the peer's certificate or lower the level for that domain with [[send_connector.tls_domain]].",
        action: "Fix the peer's certificate (`gatehouse tls probe smtp://HOST:25 --expect-name NAME` shows what is wrong), or lower the level for that domain with [[send_connector.tls_domain]] if you accept less; the mail waits meanwhile.",
    }

    /// TLS level `may`: STARTTLS was offered but failed before any mail data was sent, so the message went over a new plaintext connection (RFC 7435).
    OutboundTlsFallbackPlaintext<'a> {
        id: 2004,
        category: SmtpSend,
        level: Warning,
        verbosity: Low,
        exchange: [],
        fields: { detail: &'a str },
        key: [detail],
        message: "STARTTLS failed before any mail data; the message went in plaintext (TLS level may): {detail}",
        explanation: "TLS level `may`: STARTTLS was offered but failed before any mail data was sent, so the message went over a new plaintext connection (RFC 7435). Check the peer's TLS set-up; raise the level to `encrypt` to refuse plaintext.",
        action: "Check the peer's TLS set-up (`gatehouse tls probe`); set the level to `encrypt` or higher for the domain to refuse plaintext.",
    }

    /// A destination that was reached with better TLS before (verified or encrypted) now offers less.
    OutboundTlsDowngrade<'a> {
        id: 2005,
        category: SmtpSend,
        level: Warning,
        verbosity: Lowest,
        exchange: [],
        fields: { detail: &'a str },
        key: [detail],
        message: "a destination now offers less TLS than before: {detail}",
        explanation: "A destination that was reached with better TLS before (verified or encrypted) now offers less. This can be an attack stripping STARTTLS or a broken peer. With enforce_tls_memory = true such sessions are refused and the mail waits.",
        action: "Find out whether the peer changed (ask its operator, probe it) or something strips STARTTLS on the path; with enforce_tls_memory = true such sessions are refused and the mail waits.",
    }

    /// The MX or address lookup for a destination failed.
    OutboundDnsFailure<'a> {
        id: 2006,
        category: SmtpSend,
        level: Warning,
        verbosity: Low,
        exchange: [],
        fields: { detail: &'a str },
        key: [detail],
        message: "DNS lookup for a destination failed: {detail}",
        explanation: "The MX or address lookup for a destination failed. Temporary failures are retried; NXDOMAIN and null MX (RFC 7505) bounce at once.",
        action: "Check the resolvers ([dns] nameservers, /etc/resolv.conf) and the domain's records (`dig MX DOMAIN`). Temporary failures retry by themselves; NXDOMAIN and null MX bounce.",
    }

    /// Recipients failed permanently (5xx, null MX, expiry); a failure DSN (RFC 3464) was queued to the sender.
    FailureDsnQueued<'a> {
        id: 2101,
        category: Queue,
        level: Information,
        verbosity: Low,
        exchange: [],
        fields: { detail: &'a str },
        key: [detail],
        message: "failure DSN queued to the sender: {detail}",
        explanation: "Recipients failed permanently (5xx, null MX, expiry); a failure DSN (RFC 3464) was queued to the sender.",
        action: "Nothing: the sender is told. Many of them for one destination point at a misconfigured route or a peer refusing mail; look at the last errors with `gatehouse queue list`.",
    }

    /// Recipients have waited longer than queue.delay_dsn_after; a delay DSN was queued to the sender.
    DelayDsnQueued<'a> {
        id: 2102,
        category: Queue,
        level: Information,
        verbosity: Low,
        exchange: [],
        fields: { detail: &'a str },
        key: [detail],
        message: "delay DSN queued to the sender: {detail}",
        explanation: "Recipients have waited longer than queue.delay_dsn_after; a delay DSN was queued to the sender. Delivery goes on until expiry.",
        action: "Nothing for the message (delivery goes on until expiry). Look at why the destination defers: `gatehouse queue list --destination D`.",
    }

    /// A notification could not be delivered (it has a null sender, so no further DSN is generated and no loop can form), or the original sender is not routable.
    DsnDropped<'a> {
        id: 2103,
        category: Queue,
        level: Warning,
        verbosity: Lowest,
        exchange: [],
        fields: { detail: &'a str },
        key: [detail],
        message: "a delivery status notification was dropped: {detail}",
        explanation: "A notification could not be delivered (it has a null sender, so no further DSN is generated and no loop can form), or the original sender is not routable. Nothing else to do unless this repeats.",
        action: "Nothing unless it repeats; then check the route back to the senders named.",
    }

    /// Recipients were still undelivered after queue.expire_after; they are bounced with the last error.
    MessageExpired<'a> {
        id: 2104,
        category: Queue,
        level: Warning,
        verbosity: Lowest,
        exchange: [],
        fields: { detail: &'a str },
        key: [detail],
        message: "recipients expired in the queue and are bounced: {detail}",
        explanation: "Recipients were still undelivered after queue.expire_after; they are bounced with the last error.",
        action: "Look at the last error of the destination; raise [queue] expire_after only if the destination is known to come back.",
    }

    /// An operator deleted or bounced a queued message.
    MessageRemovedByAdmin<'a> {
        id: 2105,
        category: Queue,
        level: Information,
        verbosity: Lowest,
        exchange: [],
        fields: { detail: &'a str },
        key: [detail],
        message: "a queued message was removed by an operator: {detail}",
        explanation: "An operator deleted or bounced a queued message.",
        action: "Nothing: this records an operator action (`gatehouse queue delete|bounce`).",
    }

    /// The proxy refused a backend's certificate (OWA's event 43).
    ProxyBackendTrustFailure<'a> {
        id: 4001,
        category: Proxy,
        level: Error,
        verbosity: Lowest,
        exchange: [43],
        fields: { pool: &'a str, backend: &'a str, reason: &'a str, thumbprint: &'a str, detail: &'a str },
        key: [backend, reason],
        message: "pool `{pool}`: backend {backend} refused: {reason}; certificate {thumbprint}; {detail}",
        explanation: "The proxy verifies backend certificates (chain and name) by default, and this backend's certificate failed: its issuer is not trusted, it expired, or it does not name the backend. Clients get a 502 page naming the reason (header X-Gatehouse-Error). Exchange reports the same situation as OWA event 43 / ProxyErrorSslTrustFailure.",
        action: "Install a certificate from a trusted CA on the backend, add its CA with the pool's ca_file, set tls_name to a name the certificate holds, or (internal backends only) set allow_internal_untrusted_certs = true on the pool.",
    }

    /// The proxy could not reach a backend.
    ProxyBackendUnavailable<'a> {
        id: 4002,
        category: Proxy,
        level: Error,
        verbosity: Lowest,
        exchange: [],
        fields: { pool: &'a str, backend: &'a str, reason: &'a str, thumbprint: &'a str, detail: &'a str },
        key: [backend, reason],
        message: "pool `{pool}`: backend {backend} unavailable: {reason}; certificate {thumbprint}; {detail}",
        explanation: "A request could not be proxied: the backend refused the connection, timed out, or spoke something other than the expected protocol. Clients get a 502 or 504 page naming the reason.",
        action: "Check that the backend runs and listens on the configured address and speaks HTTPS (or set tls = false on the pool for plain HTTP); `gatehouse tls probe https://HOST:PORT` shows its TLS side.",
    }

    /// A pool runs without backend certificate verification.
    ProxyUntrustedCertsAllowed<'a> {
        id: 4003,
        category: Proxy,
        level: Warning,
        verbosity: Lowest,
        exchange: [],
        fields: { pool: &'a str },
        key: [pool],
        message: "backend pool `{pool}`: allow_internal_untrusted_certs = true; backend certificates are not verified for this pool",
        explanation: "With the opt-out, anyone on the path between the proxy and these backends can read and change client traffic, credentials included. Each request through the pool is counted.",
        action: "Give the backends certificates from a CA the proxy trusts (or add the CA with ca_file) and remove allow_internal_untrusted_certs.",
    }

    /// A backend failed its health checks.
    ProxyBackendDown<'a> {
        id: 4004,
        category: Proxy,
        level: Warning,
        verbosity: Lowest,
        exchange: [],
        fields: { pool: &'a str, backend: &'a str, failures: u32, path: &'a str, why: &'a str },
        key: [backend],
        message: "pool `{pool}`: backend {backend} failed {failures} health check(s) of {path}: {why}",
        explanation: "The backend receives no new requests; mailboxes anchored on it are re-hashed over the healthy servers until it recovers.",
        action: "Check the backend (service running, the health path answering 2xx); it comes back by itself after `rise` good checks.",
    }

    /// A backend passes its health checks again.
    ProxyBackendUp<'a> {
        id: 4005,
        category: Proxy,
        level: Information,
        verbosity: Low,
        exchange: [],
        fields: { pool: &'a str, backend: &'a str },
        key: [backend],
        message: "pool `{pool}`: backend {backend} is healthy again",
        explanation: "The backend passed `rise` health checks in a row and receives requests again.",
        action: "Nothing to do; the event marks the end of the outage begun by ProxyBackendDown (4004)."
    }

    /// Recovery found a queue record it cannot trust.
    QueueRecordQuarantined<'a> {
        id: 2190,
        category: Queue,
        level: Error,
        verbosity: Lowest,
        exchange: [],
        fields: { file: &'a str, offset: usize, reason: &'a str },
        key: [file],
        message: "queue record at {file} offset {offset} {reason}; moved to the quarantine directory and not delivered",
        explanation: "At start-up the journal found bytes that fail their checksum or are not a record at all (disk or file-system damage, or someone editing the spool). Gatehouse never delivers half a message: the bytes are copied to <data_dir>/queue/quarantine/ and start-up continues with the rest.",
        action: "Inspect the file in the quarantine directory (it holds the raw record: envelope JSON and message). If the message matters, resend it from its original sender; then delete the file. Check the disk (`dmesg`, SMART) if this repeats.",
    }

    /// Recovery cut an incomplete write off the end of a segment.
    QueueTornTailDiscarded<'a> {
        id: 2191,
        category: Queue,
        level: Warning,
        verbosity: Low,
        exchange: [],
        fields: { file: &'a str, offset: usize, bytes: usize },
        key: [file],
        message: "queue segment {file} ended in an incomplete record at offset {offset} ({bytes} bytes); discarded",
        explanation: "The process or machine stopped while a batch was being written. Those bytes were never fsynced, so no client got a 250 for them: the clients retry, nothing acknowledged is lost.",
        action: "Nothing, after an unclean stop. Repeated without crashes, check the disk.",
    }

    /// A group commit could not be written or synced.
    QueueCommitFailed<'a> {
        id: 2192,
        category: Queue,
        level: Error,
        verbosity: Lowest,
        exchange: [],
        fields: { operation: &'a str, error: &'a str, messages: usize },
        key: [operation],
        message: "queue {operation} failed ({error}); {messages} message(s) refused with 452 4.3.1, nothing acknowledged",
        explanation: "The journal could not write or fsync a batch (disk full, I/O error). The sessions answered 452 4.3.1 so the clients keep the mail and retry; the failed tail is truncated and the segment sealed, so nothing acknowledged earlier is touched.",
        action: "Free disk space under the data directory or fix the I/O error (`dmesg`); new mail is accepted again as soon as writes succeed, without a restart.",
    }

    /// A connector refused a connection at its connection limit.
    ConnectionLimitReached<'a> {
        id: 1201,
        category: SmtpReceive,
        level: Warning,
        verbosity: Low,
        exchange: [],
        fields: { connector: &'a str, client: std::net::IpAddr, limit: usize },
        key: [connector],
        message: "connector `{connector}`: connection from {client} refused with 421, {limit} connections already open",
        explanation: "The receive connector is at max_connections; new clients get 421 4.3.2 and retry later. Sustained, it delays mail.",
        action: "Raise `max_connections` on the connector (and check for slow or stuck sessions), or find the client opening too many connections.",
    }

    /// A new configuration was applied.
    ConfigReloaded<'a> {
        id: 5001,
        category: Config,
        level: Information,
        verbosity: Lowest,
        exchange: [],
        fields: { source: &'a str, applied: &'a str, restart_needed: &'a str, not_applied: &'a str },
        key: [source, applied, restart_needed, not_applied],
        message: "configuration reloaded from {source}; applied: {applied}; needs a restart: {restart_needed}; failed: {not_applied}",
        explanation: "A reload (`gatehouse reload`, SIGHUP or POST /reload) read a valid configuration and applied what can change at runtime. Changes listed under 'needs a restart' are not in effect yet; changes listed under 'failed' (for example an address that cannot be bound) were not made and that part keeps running as before.",
        action: "Fix what is listed under 'failed' and reload again; plan a restart for what is listed under 'needs a restart'; otherwise nothing.",
    }

    /// A new configuration was refused.
    ConfigReloadRefused<'a> {
        id: 5002,
        category: Config,
        level: Error,
        verbosity: Lowest,
        exchange: [],
        fields: { source: &'a str, errors: &'a str },
        key: [source, errors],
        message: "configuration reload from {source} refused; the running configuration is unchanged: {errors}",
        explanation: "A reload found errors in the new configuration. Nothing was applied: the server keeps running with the previous configuration.",
        action: "Fix the errors shown (file:line:column), check with `gatehouse check-config`, then reload again.",
    }

    /// The admin API listens.
    AdminListening<'a> {
        id: 6001,
        category: Admin,
        level: Information,
        verbosity: Low,
        exchange: [],
        fields: { address: std::net::SocketAddr, token_file: &'a str },
        key: [],
        message: "admin API listening on http://{address}/ (bearer token in {token_file})",
        explanation: "The loopback admin API serves /healthz, /readyz, /metrics, /events, /log-level and /reload. Everything except /healthz and /readyz needs the bearer token.",
        action: "Point Prometheus at /metrics with `authorization: { credentials_file: TOKEN_FILE }`.",
    }

    /// The admin bearer token was created.
    AdminTokenCreated<'a> {
        id: 6002,
        category: Admin,
        level: Information,
        verbosity: Lowest,
        exchange: [],
        fields: { token_file: &'a str },
        key: [],
        message: "created the admin API bearer token in {token_file} (mode 0600)",
        explanation: "At first start Gatehouse creates a random bearer token for the admin API, readable only by its owner.",
        action: "Give the file (not a copy of its content in a world-readable place) to the tools that call the admin API. Delete it and restart to rotate the token.",
    }

    /// A request to the admin API had no valid token.
    AdminRequestRefused<'a> {
        id: 6003,
        category: Admin,
        level: Warning,
        verbosity: Low,
        exchange: [],
        fields: { client: std::net::IpAddr, path: &'a str },
        key: [client],
        message: "admin API request for {path} from {client} refused: missing or wrong bearer token",
        explanation: "Someone on this host called the admin API without the token. It can be a misconfigured scraper or a local process probing the port.",
        action: "Give the caller the token file, or find the process (`ss -tnp`).",
    }
}

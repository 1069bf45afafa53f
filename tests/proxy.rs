//! The client-access HTTPS proxy over real sockets: HTTP/1.1 and HTTP/2
//! front, routing, header rules, smuggling refusals, backend trust (each
//! outcome with its page, header and event), the per-pool opt-out.

mod common;
mod proxy_support;

use common::TestServer;
use proxy_support::*;
use std::io::Write as _;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A proxy with one route per `(prefix, pool)` and the given pool
/// sections, started in-process; the CA file of `pki` is written next to
/// the data directory.
async fn proxy(routes: &[(&str, &str)], pools: &str, listener_extra: &str) -> TestServer {
    let mut text =
        format!("[[proxy]]\nname = \"Front\"\nlisten = [\"127.0.0.1:0\"]\n{listener_extra}\n");
    for (prefix, pool) in routes {
        text.push_str(&format!(
            "[[proxy.route]]\nprefix = \"{prefix}\"\npool = \"{pool}\"\n"
        ));
    }
    text.push_str(pools);
    TestServer::start_with("", &text).await
}

fn ca_file(pki: &Pki) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(pki.ca_pem.as_bytes()).unwrap();
    f
}

fn pool(name: &str, servers: &[(&Backend, &str)], options: &str) -> String {
    let mut s = format!("\n[[backend_pool]]\nname = \"{name}\"\n{options}\n");
    for (b, tls_name) in servers {
        s.push_str(&format!(
            "[[backend_pool.server]]\naddress = \"{}\"\ntls_name = \"{tls_name}\"\n",
            b.addr
        ));
    }
    s
}

fn addr(t: &TestServer) -> std::net::SocketAddr {
    t.server.proxy_addr("Front").expect("proxy listener")
}

fn events_about(needle: &str) -> Vec<gatehouse::events::Emitted> {
    gatehouse::events::recent()
        .into_iter()
        .filter(|e| e.message.contains(needle))
        .collect()
}

#[tokio::test]
async fn http2_and_http11_front_reach_an_http11_backend_with_forwarding_headers() {
    let pki = Pki::new();
    let ca = ca_file(&pki);
    let b = Backend::start("mbx1", Some(pki.leaf(&["mbx1.example.test"], false))).await;
    let t = proxy(
        &[("/owa", "mbx")],
        &pool(
            "mbx",
            &[(&b, "mbx1.example.test")],
            &format!("ca_file = \"{}\"", ca.path().display()),
        ),
        "",
    )
    .await;
    for mut c in [Client::h1(addr(&t)).await, Client::h2(addr(&t)).await] {
        let (status, headers, body) = c
            .get(
                "/OWA/auth/logon.aspx?x=1",
                &[
                    ("x-forwarded-for", "192.0.2.7"),
                    ("connection", "x-drop-me"),
                    ("x-drop-me", "1"),
                ],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("backend=mbx1 "), "{body}");
        assert!(body.contains("uri=/OWA/auth/logon.aspx?x=1"), "{body}");
        assert_eq!(headers["x-backend"], "mbx1");
        // Hop-by-hop fields of the backend's response do not leak.
        assert!(!headers.contains_key("x-backend-secret"));
        assert!(headers.contains_key("request-id"));
    }
    let seen = b.requests();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.headers["host"], "mail.example.test");
        assert_eq!(s.headers["x-forwarded-for"], "192.0.2.7, 127.0.0.1");
        assert_eq!(s.headers["x-forwarded-proto"], "https");
        assert_eq!(s.headers["x-forwarded-host"], "mail.example.test");
        assert_eq!(
            s.headers["forwarded"],
            "for=127.0.0.1;proto=https;host=mail.example.test"
        );
        assert!(!s.headers.contains_key("x-drop-me"), "{:?}", s.headers);
    }
    t.server.shutdown().await;
}

#[tokio::test]
async fn unknown_path_gets_404_and_empty_pool_gets_503_page() {
    let t = proxy(
        &[("/owa", "empty")],
        "\n[[backend_pool]]\nname = \"empty\"\n",
        "",
    )
    .await;
    let mut c = Client::h1(addr(&t)).await;
    let (status, headers, body) = c.get("/owax", &[]).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(headers["x-gatehouse-error"], "NoRoute");
    let (status, headers, body) = c.get("/owa/", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["x-gatehouse-error"], "NoHealthyServer");
    assert!(body.contains("has no servers configured"), "{body}");
    t.server.shutdown().await;
}

/// Each trust outcome: the status, the reason on the page, the error code
/// header, and the Error event with backend and certificate thumbprint.
#[tokio::test]
async fn backend_trust_failures_name_the_reason() {
    let pki = Pki::new();
    let ca = ca_file(&pki);
    let good = pki.leaf(&["mbx.example.test"], false);
    let expired = pki.leaf(&["mbx.example.test"], true);
    let wrong = pki.leaf(&["other.example.test"], false);
    let selfsigned = self_signed(&["mbx.example.test"]);
    let cases = [
        ("good", good, None),
        (
            "expired",
            expired,
            Some(("expired", "BackendCertificateExpired")),
        ),
        (
            "wrong",
            wrong,
            Some(("name mismatch", "BackendCertificateNameMismatch")),
        ),
        (
            "self",
            selfsigned,
            Some(("untrusted issuer", "BackendCertificateUntrusted")),
        ),
    ];
    let mut pools = String::new();
    let mut routes = Vec::new();
    let mut backends = Vec::new();
    for (name, id, _) in &cases {
        let leaf_thumb = thumbprint(id.0[0].as_ref());
        let b = Backend::start(name, Some((id.0.clone(), id.1.clone_key()))).await;
        pools.push_str(&pool(
            name,
            &[(&b, "mbx.example.test")],
            &format!("ca_file = \"{}\"", ca.path().display()),
        ));
        routes.push((format!("/{name}"), name.to_string()));
        backends.push((b, leaf_thumb));
    }
    let route_refs: Vec<(&str, &str)> = routes
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let t = proxy(&route_refs, &pools, "").await;
    let mut c = Client::h1(addr(&t)).await;
    for ((name, _, expect), (b, thumb)) in cases.iter().zip(&backends) {
        let (status, headers, body) = c.get(&format!("/{name}/x"), &[]).await;
        match expect {
            None => {
                assert_eq!(status, 200, "{name}: {body}");
                assert_eq!(b.requests().len(), 1);
            }
            Some((reason, code)) => {
                assert_eq!(status, 502, "{name}: {body}");
                assert_eq!(headers["x-gatehouse-error"], *code, "{name}");
                assert!(body.contains(reason), "{name}: {body}");
                assert!(
                    b.requests().is_empty(),
                    "{name}: request reached the backend"
                );
                let ev = events_about(&b.addr.to_string());
                let e = ev.last().unwrap_or_else(|| panic!("{name}: no event"));
                assert_eq!(e.name, "ProxyBackendTrustFailure");
                assert_eq!(e.id, 4001);
                assert!(e.message.contains(reason), "{}", e.message);
                assert!(e.message.contains(thumb.as_str()), "{}", e.message);
            }
        }
    }
    assert_eq!(
        gatehouse::events::ProxyBackendTrustFailure::ENTRY.exchange_ids,
        &[43]
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn refused_backend_gets_502_refused() {
    // A port that was just free: nothing listens there.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    let t = proxy(
        &[("/ews", "dead")],
        &format!(
            "\n[[backend_pool]]\nname = \"dead\"\n[[backend_pool.server]]\naddress = \"{dead}\"\n"
        ),
        "",
    )
    .await;
    let mut c = Client::h2(addr(&t)).await;
    let (status, headers, body) = c.get("/ews/exchange.asmx", &[]).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(headers["x-gatehouse-error"], "BackendConnectionRefused");
    assert!(body.contains("refused"), "{body}");
    let ev = events_about(&dead.to_string());
    assert_eq!(ev.last().map(|e| e.name), Some("ProxyBackendUnavailable"));
    // Counted on /metrics too (pool `dead` is this test's own).
    use gatehouse::admin::metrics::{PROXY_BACKEND_FAILURES, PROXY_REQUESTS};
    assert_eq!(PROXY_BACKEND_FAILURES.get(&["dead", "refused"]), 1);
    assert!(PROXY_REQUESTS.get(&["Front", "5xx"]) >= 1);
    t.server.shutdown().await;
}

#[tokio::test]
async fn untrusted_opt_out_applies_to_its_pool_only_and_is_logged() {
    let a = Backend::start("lax", Some(self_signed(&["lax.example.test"]))).await;
    let b = Backend::start("strict", Some(self_signed(&["strict.example.test"]))).await;
    let pools = format!(
        "{}{}",
        pool(
            "lax",
            &[(&a, "lax.example.test")],
            "allow_internal_untrusted_certs = true"
        ),
        pool("strict", &[(&b, "strict.example.test")], "")
    );
    let t = proxy(&[("/lax", "lax"), ("/strict", "strict")], &pools, "").await;
    let warn = events_about("backend pool `lax`: allow_internal_untrusted_certs");
    assert_eq!(
        warn.last().map(|e| e.name),
        Some("ProxyUntrustedCertsAllowed")
    );
    let mut c = Client::h1(addr(&t)).await;
    for _ in 0..3 {
        assert_eq!(c.get("/lax/", &[]).await.0, 200);
    }
    let (status, headers, _) = c.get("/strict/", &[]).await;
    assert_eq!(status, 502);
    assert_eq!(headers["x-gatehouse-error"], "BackendCertificateUntrusted");
    let lax = t
        .server
        .proxy_pools
        .iter()
        .find(|p| p.name == "lax")
        .unwrap();
    assert_eq!(lax.unverified_requests.get(), 3);
    assert_eq!(
        gatehouse::admin::metrics::PROXY_UNVERIFIED_REQUESTS.get(&["lax"]),
        3,
        "the opt-out counter is on /metrics"
    );
    t.server.shutdown().await;
}

/// Raw HTTP/1.1 over TLS: writes `raw`, returns what comes back until the
/// proxy closes (bounded).
async fn raw_exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut tls = tls_connect(addr, &[b"http/1.1"]).await;
    tls.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn smuggling_attempts_are_refused_with_400_and_never_reach_the_backend() {
    let b = Backend::start("plain", None).await;
    let t = proxy(
        &[("/", "plain")],
        &pool("plain", &[(&b, "plain.test")], "tls = false"),
        "",
    )
    .await;
    let attempts: [&[u8]; 4] = [
        b"POST /owa/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n",
        b"POST /owa/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
        b"POST /owa/ HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST /owa/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4, 5\r\n\r\nabcd",
    ];
    for raw in attempts {
        let reply = raw_exchange(addr(&t), raw).await;
        assert!(
            reply.starts_with("HTTP/1.1 400 ") || reply.starts_with("HTTP/1.1 501 "),
            "{}: {reply}",
            String::from_utf8_lossy(raw)
        );
        // One answer, then the connection is closed: nothing after it is
        // read as a second request.
        assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply}");
    }
    assert!(b.requests().is_empty(), "{:?}", b.requests());
    // A well-framed request still works.
    let ok = raw_exchange(
        addr(&t),
        b"POST /owa/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
    assert_eq!(b.requests().len(), 1);
    assert_eq!(b.requests()[0].body_bytes, 4);
    t.server.shutdown().await;
}

#[tokio::test]
async fn limits_on_headers_and_body_size() {
    let b = Backend::start("plain", None).await;
    let t = proxy(
        &[("/", "plain")],
        &pool("plain", &[(&b, "plain.test")], "tls = false"),
        "max_headers = 20\nmax_body_size = \"1KiB\"\nmax_header_bytes = \"16KiB\"",
    )
    .await;
    let mut many = String::from("GET /a HTTP/1.1\r\nHost: a.test\r\n");
    for i in 0..30 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let reply = raw_exchange(addr(&t), many.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 431 "), "{reply}");
    let big = format!(
        "GET /a HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let reply = raw_exchange(addr(&t), big.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 431 "), "{reply}");
    let reply = raw_exchange(
        addr(&t),
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2000\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 413 "), "{reply}");
    assert!(reply.contains("RequestTooLarge"), "{reply}");
    assert!(b.requests().is_empty());
    t.server.shutdown().await;

    // The default, 100 headers (hyper's own limit, left unset).
    let t = proxy(
        &[("/", "plain")],
        &pool("plain", &[(&b, "plain.test")], "tls = false"),
        "",
    )
    .await;
    let head = |n: usize| {
        let mut h = String::from("GET /a HTTP/1.1\r\nHost: a.test\r\n");
        for i in 0..n {
            h.push_str(&format!("X-H{i}: v\r\n"));
        }
        h + "Connection: close\r\n\r\n"
    };
    // 90 of them, with Host and Connection (the test backend, also
    // hyper, would refuse the ~100 it gets with the forwarding headers).
    let before = b.requests().len();
    let reply = raw_exchange(addr(&t), head(90).as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    assert_eq!(b.requests().len(), before + 1);
    let reply = raw_exchange(addr(&t), head(101).as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 431 "), "{reply}");
    assert_eq!(
        b.requests().len(),
        before + 1,
        "101 headers reached the backend"
    );
    t.server.shutdown().await;
}

/// NTLM is connection-oriented: the three legs and the follow-ups of one
/// client connection must use one backend connection, which no other
/// client may borrow in between.
#[tokio::test]
async fn ntlm_handshake_is_pinned_to_one_backend_connection() {
    let b = Backend::start("mbx", None).await;
    let t = proxy(
        &[("/ews", "p")],
        &pool("p", &[(&b, "mbx.test")], "tls = false"),
        "",
    )
    .await;
    let mut ntlm = Client::h1(addr(&t)).await;
    let mut other = Client::h1(addr(&t)).await;
    let (s, h, _) = ntlm
        .get("/ews/ntlm", &[("authorization", "NTLM TlRMTVNTUAABAAAA")])
        .await;
    assert_eq!(s, 401);
    // The challenge passes through unchanged.
    assert_eq!(h["www-authenticate"], "NTLM TlRMTVNTUAACAAAA");
    // Another client in between: with ordinary pooling it would get the
    // connection the first leg used.
    let (s, _, body) = other
        .get("/ews/basic", &[("authorization", "Basic dTpw")])
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, _, body) = ntlm
        .get("/ews/ntlm", &[("authorization", "NTLM TlRMTVNTUAADAAAA")])
        .await;
    assert_eq!(s, 200, "{body}");
    for _ in 0..3 {
        let (s, _, body) = ntlm.get("/ews/ntlm-followup", &[]).await;
        assert_eq!(s, 200, "{body}");
    }
    let seen = b.requests();
    let ntlm_conns: std::collections::HashSet<usize> = seen
        .iter()
        .filter(|s| s.uri.starts_with("/ews/ntlm"))
        .map(|s| s.conn)
        .collect();
    assert_eq!(ntlm_conns.len(), 1, "{seen:?}");
    let basic = seen.iter().find(|s| s.uri == "/ews/basic").unwrap();
    assert!(!ntlm_conns.contains(&basic.conn), "{seen:?}");
    // One connection for the whole NTLM client, one for the Basic one.
    assert_eq!(b.connections.load(std::sync::atomic::Ordering::SeqCst), 2);
    t.server.shutdown().await;
}

fn backend_of(body: &str) -> String {
    body.split_whitespace()
        .next()
        .and_then(|w| w.strip_prefix("backend="))
        .unwrap_or("")
        .to_string()
}

async fn wait_event(name: &'static str, needle: &str) {
    let start = std::time::Instant::now();
    while !events_about(needle).iter().any(|e| e.name == name) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no {name} event about {needle}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn anchor_mailbox_affinity_is_stable_and_rehashed_when_a_server_is_down() {
    let bs = [
        Backend::start("a", None).await,
        Backend::start("b", None).await,
        Backend::start("c", None).await,
    ];
    let servers: Vec<(&Backend, &str)> = bs.iter().map(|b| (b, "mbx.test")).collect();
    let t = proxy(
        &[("/mapi", "p")],
        &pool(
            "p",
            &servers,
            "tls = false\nhealth_check = { path = \"/health\", interval = \"100ms\", timeout = \"1s\", rise = 1, fall = 1 }",
        ),
        "",
    )
    .await;
    let mut c = Client::h2(addr(&t)).await;
    let users: Vec<String> = (0..30).map(|i| format!("user{i}@example.test")).collect();
    let mut first = std::collections::HashMap::new();
    for round in 0..2 {
        for u in &users {
            let (s, _, body) = c.get("/mapi/emsmdb/", &[("x-anchormailbox", u)]).await;
            assert_eq!(s, 200);
            let got = backend_of(&body);
            if round == 0 {
                first.insert(u.clone(), got);
            } else {
                assert_eq!(first[u], got, "{u} moved");
            }
        }
    }
    let used: std::collections::HashSet<&String> = first.values().collect();
    assert_eq!(used.len(), 3, "30 users all on {used:?}");
    // Take down the server of user0.
    let down = first[&users[0]].clone();
    let idx = bs.iter().position(|b| b.name == down).unwrap();
    bs[idx]
        .healthy
        .store(false, std::sync::atomic::Ordering::SeqCst);
    wait_event("ProxyBackendDown", &bs[idx].addr.to_string()).await;
    for u in &users {
        let (s, _, body) = c.get("/mapi/emsmdb/", &[("x-anchormailbox", u)]).await;
        assert_eq!(s, 200);
        let got = backend_of(&body);
        assert_ne!(got, down, "{u} still sent to the down server");
        if first[u] != down {
            assert_eq!(first[u], got, "{u} moved although its server is up");
        }
    }
    bs[idx]
        .healthy
        .store(true, std::sync::atomic::Ordering::SeqCst);
    wait_event("ProxyBackendUp", &bs[idx].addr.to_string()).await;
    for u in &users {
        let (_, _, body) = c.get("/mapi/emsmdb/", &[("x-anchormailbox", u)]).await;
        assert_eq!(first[u], backend_of(&body), "{u} did not come back");
    }
    t.server.shutdown().await;
}

#[tokio::test]
async fn without_anchor_the_least_busy_server_is_chosen() {
    let bs = [
        Backend::start("a", None).await,
        Backend::start("b", None).await,
        Backend::start("c", None).await,
    ];
    let servers: Vec<(&Backend, &str)> = bs.iter().map(|b| (b, "mbx.test")).collect();
    let t = proxy(&[("/", "p")], &pool("p", &servers, "tls = false"), "").await;
    // Hold one long response open (body not read): one outstanding request.
    let mut holder = Client::h1(addr(&t)).await;
    let held = holder
        .send(
            hyper::Request::get("/big?n=104857600")
                .header("host", "mail.example.test")
                .body(full(""))
                .unwrap(),
        )
        .await;
    let busy = held.headers()["x-backend"].to_str().unwrap().to_string();
    let mut c = Client::h1(addr(&t)).await;
    let mut counts = std::collections::HashMap::new();
    for _ in 0..12 {
        let (s, _, body) = c.get("/owa/", &[]).await;
        assert_eq!(s, 200);
        *counts.entry(backend_of(&body)).or_insert(0) += 1;
    }
    assert!(
        !counts.contains_key(&busy),
        "{busy} got requests: {counts:?}"
    );
    assert_eq!(counts.len(), 2, "{counts:?}");
    drop(held);
    t.server.shutdown().await;
}

#[tokio::test]
async fn every_request_is_in_the_httpproxy_log() {
    let b = Backend::start("mbx", None).await;
    let t = proxy(
        &[("/owa", "p"), ("/ews", "empty")],
        &format!(
            "{}\n[[backend_pool]]\nname = \"empty\"\n",
            pool("p", &[(&b, "mbx.test")], "tls = false")
        ),
        "",
    )
    .await;
    let mut c = Client::h1(addr(&t)).await;
    let (s, h, _) = c
        .get(
            "/owa/big?n=5000",
            &[
                ("x-anchormailbox", "alice@example.test"),
                ("authorization", "Basic dTpw"),
                ("user-agent", "Outlook, \"test\""),
            ],
        )
        .await;
    assert_eq!(s, 200);
    let first_id = h["request-id"].to_str().unwrap().to_string();
    assert_eq!(c.get("/ews/x", &[]).await.0, 503);
    let dir = t.data_dir().join("log/protocol/HttpProxy");
    let data_dir = t.dir;
    t.server.shutdown().await;
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with("HttpProxy_") && name.ends_with("-1.LOG"),
        "{name}"
    );
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("#Log-type: HttpProxy Logs\r\n"), "{text}");
    let fields_line = text
        .lines()
        .find_map(|l| l.strip_prefix("#Fields: "))
        .unwrap();
    let names: Vec<&str> = fields_line.split(',').collect();
    assert_eq!(names[0], "DateTime");
    let records: Vec<Vec<String>> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| gatehouse::protolog::split_csv(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{text}");
    let col = |r: &Vec<String>, n: &str| r[names.iter().position(|x| *x == n).unwrap()].clone();
    let ok = &records[0];
    assert_eq!(ok.len(), names.len());
    assert_eq!(col(ok, "RequestId"), first_id);
    assert_eq!(col(ok, "Protocol"), "Owa");
    assert_eq!(col(ok, "UrlStem"), "/owa/big");
    assert_eq!(col(ok, "UrlQuery"), "?n=5000");
    assert_eq!(col(ok, "Method"), "GET");
    assert_eq!(col(ok, "HttpStatus"), "200");
    assert_eq!(col(ok, "BackEndStatus"), "200");
    assert_eq!(col(ok, "TargetServer"), b.addr.to_string());
    assert_eq!(col(ok, "AnchorMailbox"), "alice@example.test");
    assert_eq!(col(ok, "RoutingType"), "AnchorMailbox");
    assert_eq!(col(ok, "AuthenticationType"), "Basic");
    assert_eq!(col(ok, "UserAgent"), "Outlook, \"test\"");
    assert_eq!(col(ok, "ClientIpAddress"), "127.0.0.1");
    assert_eq!(col(ok, "ResponseBytes"), "5000");
    let failed = &records[1];
    assert_eq!(col(failed, "HttpStatus"), "503");
    assert_eq!(col(failed, "ErrorCode"), "NoHealthyServer");
    assert_eq!(col(failed, "Protocol"), "Ews");
    drop(data_dir);
}

#[tokio::test]
async fn slow_backend_gets_504_and_idle_clients_are_closed() {
    let b = Backend::start("slow", None).await;
    let t = proxy(
        &[("/", "p")],
        &pool("p", &[(&b, "mbx.test")], "tls = false"),
        "request_timeout = \"1s\"\nidle_timeout = \"1s\"",
    )
    .await;
    let mut c = Client::h1(addr(&t)).await;
    let started = std::time::Instant::now();
    let (s, h, body) = c.get("/owa/slow", &[]).await;
    assert_eq!(s, 504, "{body}");
    assert_eq!(h["x-gatehouse-error"], "BackendTimeout");
    assert!(started.elapsed() < Duration::from_millis(2900));
    // A connection that sends nothing is closed after idle_timeout.
    let mut idle = tls_connect(addr(&t), &[b"http/1.1"]).await;
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("closed within 5 s")
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    t.server.shutdown().await;
}

/// Slowloris: a request head trickled a byte at a time, each byte well
/// within the idle timeout, is cut off once no request has started for
/// `idle_timeout`; a connection idle after a request is closed too.
#[tokio::test]
async fn a_trickled_request_head_and_an_idle_keep_alive_connection_are_closed() {
    let b = Backend::start("mbx", None).await;
    let t = proxy(
        &[("/", "p")],
        &pool("p", &[(&b, "mbx.test")], "tls = false"),
        "idle_timeout = \"1s\"",
    )
    .await;
    let mut slow = tls_connect(addr(&t), &[b"http/1.1"]).await;
    let started = std::time::Instant::now();
    let head = b"GET /owa/ HTTP/1.1\r\nHost: mail.example.test\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = false;
    for byte in head.iter() {
        if slow.write_all(&[*byte]).await.is_err() || slow.flush().await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    if !cut {
        // The server may have closed while the last writes sat in buffers.
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(3), slow.read(&mut buf))
            .await
            .expect("the trickled connection is closed")
            .unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_millis(3500), "{took:?}");
    assert!(
        b.requests().is_empty(),
        "a trickled head reached the backend"
    );

    // Keep-alive: one request answered, then silence.
    let mut c = tls_connect(addr(&t), &[b"http/1.1"]).await;
    c.write_all(b"GET /owa/ HTTP/1.1\r\nHost: mail.example.test\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("closed within 5 s")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    t.server.shutdown().await;
}

#[tokio::test]
async fn backend_connections_are_reused_across_requests() {
    let pki = Pki::new();
    let ca = ca_file(&pki);
    let b = Backend::start("mbx", Some(pki.leaf(&["mbx.example.test"], false))).await;
    let t = proxy(
        &[("/", "p")],
        &pool(
            "p",
            &[(&b, "mbx.example.test")],
            &format!("ca_file = \"{}\"", ca.path().display()),
        ),
        "",
    )
    .await;
    let mut c1 = Client::h1(addr(&t)).await;
    let mut c2 = Client::h2(addr(&t)).await;
    for _ in 0..20 {
        assert_eq!(c1.get("/owa/", &[]).await.0, 200);
        assert_eq!(c2.get("/owa/", &[]).await.0, 200);
    }
    let n = b.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(n <= 2, "{n} backend connections for 40 sequential requests");
    t.server.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish_and_refuses_new_connections() {
    let b = Backend::start("slow", None).await;
    let t = proxy(
        &[("/", "p")],
        &pool("p", &[(&b, "mbx.test")], "tls = false"),
        "",
    )
    .await;
    let a = addr(&t);
    let mut c = Client::h1(a).await;
    let in_flight = tokio::spawn(async move { c.get("/owa/slow", &[]).await });
    // Let the request reach the backend, then stop the server.
    let start = std::time::Instant::now();
    while b.requests().is_empty() && b.connections.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = tokio::spawn(t.server.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(a).await.is_err(),
        "the listener still accepts during shutdown"
    );
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("uri=/owa/slow"), "{body}");
    stopping.await.unwrap();
}

/// The store's CA certificates are trust anchors for backends: the
/// intermediate of a chain imported into the store (the store keeps leaf
/// and intermediates, not the root) makes backends issued by it trusted
/// without any ca_file or system root.
#[tokio::test]
async fn ca_certificates_in_the_store_are_trusted_for_backends() {
    let pki = Pki::new().intermediate();
    let b = Backend::start("mbx", Some(pki.leaf(&["mbx.example.test"], false))).await;
    let stranger = Backend::start("x", Some(Pki::new().leaf(&["mbx.example.test"], false))).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var");
    std::fs::create_dir_all(&data).unwrap();
    // Import a front certificate issued by the same CA, with its chain.
    let (chain, key) = pki.leaf(&["mail.example.test"], false);
    let mut pem = String::new();
    for c in &chain {
        pem.push_str(&to_pem("CERTIFICATE", c.as_ref()));
    }
    pem.push_str(&to_pem("PRIVATE KEY", key.secret_der()));
    let file = dir.path().join("front.pem");
    std::fs::write(&file, pem).unwrap();
    gatehouse::certs::CertStore::open(&data)
        .unwrap()
        .import(&file, None)
        .expect("import");
    let extra = format!(
        "[[proxy]]\nname = \"Front\"\nlisten = [\"127.0.0.1:0\"]\n\
         [[proxy.route]]\nprefix = \"/\"\npool = \"p\"\n\
         [[proxy.route]]\nprefix = \"/other\"\npool = \"q\"\n{}{}",
        pool("p", &[(&b, "mbx.example.test")], "system_roots = false"),
        pool(
            "q",
            &[(&stranger, "mbx.example.test")],
            "system_roots = false"
        ),
    );
    let t = TestServer::start_in(dir, &data, "", &extra).await;
    let mut c = Client::h1(addr(&t)).await;
    let (s, _, body) = c.get("/owa/", &[]).await;
    assert_eq!(s, 200, "{body}");
    // A backend from another CA is still refused.
    let (s, h, _) = c.get("/other/", &[]).await;
    assert_eq!(s, 502);
    assert_eq!(h["x-gatehouse-error"], "BackendCertificateUntrusted");
    t.server.shutdown().await;
}

fn to_pem(label: &str, der: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.iter().fold(0u32, |a, &x| (a << 8) | x as u32) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A plain-HTTP backend that answers the first request of each
/// connection (keep-alive) and closes the connection, without an answer,
/// when a second request arrives on it: what a backend whose keep-alive
/// timer fired just as the proxy reused the connection looks like.
/// Returns its address and the number of connections it accepted.
async fn closes_after_one_request() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = n.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                let mut answered = false;
                loop {
                    let Ok(k) = s.read(&mut buf).await else {
                        return;
                    };
                    if k == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..k]);
                    if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        if answered {
                            // The second request: close without a word.
                            return;
                        }
                        head.drain(..end + 4);
                        answered = true;
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst")
                            .await;
                    }
                }
            });
        }
    });
    (a, n)
}

#[tokio::test]
async fn a_stale_keep_alive_connection_is_retried_for_idempotent_requests_only() {
    let (backend, connections) = closes_after_one_request().await;
    let t = proxy(
        &[("/", "p")],
        &format!(
            "\n[[backend_pool]]\nname = \"p\"\ntls = false\n[[backend_pool.server]]\naddress = \"{backend}\"\n"
        ),
        "",
    )
    .await;
    let mut c = Client::h1(addr(&t)).await;
    assert_eq!(c.get("/owa/", &[]).await.0, 200);
    // Idle long enough for the connection to count as possibly stale.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, _, body) = c.get("/owa/", &[]).await;
    assert_eq!(status, 200, "GET retried on a new connection: {body}");
    assert_eq!(body, "first");
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);

    // A POST is not idempotent: it is not sent twice.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let req = hyper::Request::post("/owa/")
        .header("host", "mail.example.test")
        .body(full("a=1"))
        .unwrap();
    let resp = c.send(req).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-gatehouse-error"], "BackendProtocolError");
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
    t.server.shutdown().await;
}

/// The fallback announcement checks each TLS listener against its own
/// service: with the only certificate enabled for smtp and not https, the
/// proxy listener (not the SMTP connector) gets a CertificateFallback
/// event that names https.
#[tokio::test]
async fn a_proxy_without_an_https_certificate_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var");
    let store = gatehouse::certs::CertStore::open(&data).unwrap();
    store.ensure_default("mail.example.test").unwrap();
    let default = store
        .list()
        .unwrap()
        .into_iter()
        .find(|c| c.is_default)
        .unwrap();
    store
        .enable(
            &default.sha1,
            gatehouse::certs::Services {
                smtp: true,
                https: false,
            },
        )
        .unwrap();
    let b = Backend::start("mbx", None).await;
    let text = format!(
        "[[proxy]]\nname = \"NoHttpsCert\"\nlisten = [\"127.0.0.1:0\"]\n[[proxy.route]]\nprefix = \"/\"\npool = \"p\"\n{}",
        pool("p", &[(&b, "mbx.test")], "tls = false")
    );
    let t = TestServer::start_in(dir, &data, "", &text).await;
    let ev = events_about("NoHttpsCert");
    assert!(
        ev.iter()
            .any(|e| e.name == "CertificateFallback" && e.message.contains("enabled for https")),
        "{ev:?}"
    );
    // The SMTP connector has its certificate (no other test here makes a
    // store without one): no fallback for smtp.
    assert!(
        !gatehouse::events::recent()
            .iter()
            .any(|e| e.name == "CertificateFallback" && e.message.contains("enabled for smtp")),
    );
    t.server.shutdown().await;
}

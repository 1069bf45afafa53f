//! The HTTPS proxy's request-head rules, on any header block a client can
//! send: framing checks (smuggling refusal), hop-by-hop removal, anchor
//! mailbox and authentication scheme extraction must answer, never panic;
//! and the raw-byte smuggling detector (`SniffIo`, which watches bytes on
//! their way into hyper) must reach the same verdict however the network
//! cut the stream into reads. The first byte picks the read size.
#![no_main]
use gatehouse::proxy::headers::{
    anchor_mailbox, auth_scheme, check_request_head, remove_hop_by_hop,
};
use gatehouse::proxy::sniff::SniffIo;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::io::AsyncReadExt;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

/// Reads `input` through SniffIo in `step`-byte reads; returns the flag.
fn sniff(input: &[u8], step: usize) -> bool {
    let flag = Arc::new(AtomicBool::new(false));
    let mut io = SniffIo::new(input, flag.clone(), true);
    runtime().block_on(async {
        let mut buf = vec![0u8; step.max(1)];
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    flag.load(Ordering::Relaxed)
}

fuzz_target!(|data: &[u8]| {
    let [step, input @ ..] = data else {
        return;
    };
    // Differential: whole vs cut into small reads.
    assert_eq!(
        sniff(input, input.len()),
        sniff(input, usize::from(*step % 13) + 1),
        "smuggling verdict depends on read boundaries"
    );

    // The header rules on whatever parses as header fields.
    let text = String::from_utf8_lossy(input);
    let mut headers = HeaderMap::new();
    for line in text.split("\r\n") {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_bytes(value.trim().as_bytes()),
        ) {
            headers.append(n, v);
        }
    }
    let _ = check_request_head(&headers, 100);
    let _ = anchor_mailbox(&headers, Some(&text), Some("anchor"), Some("mbx"));
    let _ = auth_scheme(&headers);
    remove_hop_by_hop(&mut headers);
    assert!(headers.get("connection").is_none(), "Connection survived hop-by-hop removal");
});

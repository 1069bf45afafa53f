//! RPC over HTTP and MAPI over HTTP on one listener (seed 004): the two
//! RPC channels stream 200 MB each way at the same time without the proxy
//! buffering them (process RSS stays bounded), and MAPI POSTs keep their
//! headers. Its own test binary, so no other test's memory counts.

mod common;
mod proxy_support;

use common::TestServer;
use proxy_support::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const CHANNEL: u64 = 200 * 1024 * 1024;
/// Growth allowed while 400 MB pass through: a buffering proxy would
/// exceed it twice over.
const RSS_LIMIT: u64 = 96 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_channels_stream_200_mb_each_way_with_bounded_memory_and_mapi_coexists() {
    let b = Backend::start("cas", None).await;
    let text = format!(
        "[[proxy]]\nname = \"Front\"\nlisten = [\"127.0.0.1:0\"]\n\
         [[proxy.route]]\nprefix = \"/rpc\"\npool = \"p\"\n\
         [[proxy.route]]\nprefix = \"/mapi\"\npool = \"p\"\n\
         [[backend_pool]]\nname = \"p\"\ntls = false\n\
         [[backend_pool.server]]\naddress = \"{}\"\n",
        b.addr
    );
    let t = TestServer::start_with("", &text).await;
    let addr = t.server.proxy_addr("Front").unwrap();

    // MAPI over HTTP first: a POST with its request-type headers.
    let mut mapi = Client::h1(addr).await;
    let resp = mapi
        .send(
            hyper::Request::post("/mapi/emsmdb/?MailboxId=0a1b@example.test")
                .header("host", "mail.example.test")
                .header("x-requesttype", "Connect")
                .header("x-clientinfo", "{2F94A2BF-A2E6-4CCC-BF98-B5F22C542226}:1")
                .header("content-type", "application/mapi-http")
                .body(full(vec![7u8; 1000]))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let seen = b.requests();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].headers["x-requesttype"], "Connect");
    assert_eq!(
        seen[0].headers["x-clientinfo"],
        "{2F94A2BF-A2E6-4CCC-BF98-B5F22C542226}:1"
    );
    assert_eq!(seen[0].body_bytes, 1000);

    let baseline = rss_bytes();
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = std::time::Instant::now();
    let inbound = async {
        let mut c = Client::h1(addr).await;
        let resp = c
            .send(
                hyper::Request::builder()
                    .method("RPC_IN_DATA")
                    .uri("/rpc/rpcproxy.dll?0a1b@example.test:6001")
                    .header("host", "mail.example.test")
                    .header("content-length", CHANNEL)
                    .body(Zeros::boxed(CHANNEL))
                    .unwrap(),
            )
            .await;
        assert_eq!(resp.status(), 200);
        String::from_utf8(
            http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    };
    let outbound = async {
        let mut c = Client::h2(addr).await;
        let resp = c
            .send(
                hyper::Request::builder()
                    .method("RPC_OUT_DATA")
                    .uri(format!(
                        "https://mail.example.test/rpc/rpcproxy.dll?n={CHANNEL}"
                    ))
                    .body(full(""))
                    .unwrap(),
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-length"], CHANNEL.to_string());
        drain(resp.into_body()).await
    };
    let (in_reply, out_bytes) = tokio::time::timeout(Duration::from_secs(240), async {
        tokio::join!(inbound, outbound)
    })
    .await
    .expect("both channels finish within 240 s");
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let elapsed = started.elapsed();
    assert!(in_reply.contains(&format!("bytes={CHANNEL}")), "{in_reply}");
    assert_eq!(out_bytes, CHANNEL);
    let rpc_in = b
        .requests()
        .into_iter()
        .find(|s| s.method == "RPC_IN_DATA")
        .unwrap();
    assert_eq!(rpc_in.headers["content-length"], CHANNEL.to_string());
    let growth = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    eprintln!(
        "RPC channels: 2 x {} MB in {elapsed:?}; RSS baseline {} MB, peak growth {} MB",
        CHANNEL >> 20,
        baseline >> 20,
        growth >> 20
    );
    assert!(
        growth < RSS_LIMIT,
        "RSS grew by {} MB while streaming",
        growth >> 20
    );
    t.server.shutdown().await;
}

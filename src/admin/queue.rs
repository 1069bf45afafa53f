//! The queue endpoints of the admin API, over `Queue`'s operator actions
//! (src/queue/ops.rs). `gatehouse queue ...` (src/queue/cli.rs) calls them.
//!
//! ```text
//! GET    /queue[?destination=D]   messages, oldest first (JSON list)
//! GET    /queue/ID                one message (404 unknown, 400 not an ID)
//! POST   /queue/ID/retry          try its deferred recipients now
//! POST   /queue/retry?destination=D   try everything waiting for D now
//! POST   /queue/flush             try everything deferred now
//! DELETE /queue/ID                remove it, no DSN (postsuper -d)
//! POST   /queue/ID/bounce         remove it with a failure DSN (Remove-Message -WithNDR)
//! ```
//!
//! Every answer is JSON; errors carry `{"error": "..."}` with the text an
//! operator acts on.

use super::{Reply, json};
use crate::queue::Queue;
use crate::queue::ops::OpError;
use hyper::{Method, StatusCode};

fn op_error(e: OpError) -> Reply {
    let status = match e {
        OpError::NotFound(_) => StatusCode::NOT_FOUND,
        OpError::BadId(_) => StatusCode::BAD_REQUEST,
        OpError::Storage => StatusCode::SERVICE_UNAVAILABLE,
    };
    json(status, &serde_json::json!({ "error": e.to_string() }))
}

fn bad(msg: &str) -> Reply {
    json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({ "error": msg }),
    )
}

/// Handles `path` (which starts with `/queue`); `destination` is the
/// query parameter of that name.
pub(super) async fn route(
    method: &Method,
    path: &str,
    destination: Option<&str>,
    queue: &Queue,
) -> Reply {
    let parts: Vec<&str> = path
        .trim_start_matches("/queue")
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    match (method, parts.as_slice()) {
        (&Method::GET, []) => json(StatusCode::OK, &queue.list(destination)),
        (&Method::POST, ["flush"]) => json(
            StatusCode::OK,
            &serde_json::json!({ "flushed": queue.flush() }),
        ),
        (&Method::POST, ["retry"]) => match destination {
            Some(d) if !d.is_empty() => json(
                StatusCode::OK,
                &serde_json::json!({ "destination": d, "retried": queue.retry_destination(d) }),
            ),
            _ => bad("POST /queue/retry needs ?destination=DOMAIN (or local:MAILBOX)"),
        },
        (&Method::GET, [id]) => match queue.show(id) {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => op_error(e),
        },
        (&Method::DELETE, [id]) => match queue.delete(id) {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({ "deleted": id })),
            Err(e) => op_error(e),
        },
        (&Method::POST, [id, "retry"]) => match queue.retry(id) {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({ "retried": id })),
            Err(e) => op_error(e),
        },
        (&Method::POST, [id, "bounce"]) => match queue.bounce(id).await {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({ "bounced": id })),
            Err(e) => op_error(e),
        },
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": format!("no route {method} {path}; see docs/admin.md") }),
        ),
    }
}

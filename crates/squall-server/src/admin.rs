//! The admin HTTP API: health, readiness, statistics, Prometheus metrics.
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | 200 `ok` while the process runs |
//! | `GET /readyz` | 200 while the broker accepts work, 503 once it is closing |
//! | `GET /v1/streams` | JSON: every stream's statistics (depth, bytes, oldest age, groups with in flight, lag, counters; the `dlq` stream's depth is the dead-letter depth) |
//! | `GET /v1/streams/{name}` | JSON: one stream, 404 if unknown |
//! | `GET /metrics` | Prometheus text format |
//!
//! Bound to loopback by default. When a token is configured every route except `/healthz`
//! requires `Authorization: Bearer <token>`; binding beyond loopback without one is refused.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use squall_broker::Broker;
use squall_core::{Error, ErrorKind, Result};
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct AdminState {
    broker: Broker,
    prometheus: Option<PrometheusHandle>,
    token: Option<Arc<str>>,
}

/// The admin routes over `broker`. `prometheus` renders `/metrics` (install the recorder once per
/// process, in the binary); `token` enables bearer authentication.
pub fn router(
    broker: Broker,
    prometheus: Option<PrometheusHandle>,
    token: Option<String>,
) -> Router {
    let state = AdminState {
        broker,
        prometheus,
        token: token.map(Into::into),
    };
    Router::new()
        .route("/readyz", get(ready))
        .route("/v1/streams", get(streams))
        .route("/v1/streams/{name}", get(stream))
        .route("/metrics", get(render_metrics))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

/// Serves `router` on `addr` until `shutdown` fires. Refuses a non-loopback address without a
/// token (`admin.token`).
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    has_token: bool,
    shutdown: CancellationToken,
) -> Result<()> {
    if !addr.ip().is_loopback() && !has_token {
        return Err(Error::config(
            "admin.token",
            format!("the admin API on {addr} (not loopback) requires a token"),
        ));
    }
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("cannot listen on {addr} (set `admin.listen`)"),
        )
        .with_source(e)
    })?;
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|e| Error::new(ErrorKind::Unavailable, "admin API failed").with_source(e))
}

async fn auth(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| t == &**token);
        if !ok {
            return (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response();
        }
    }
    next.run(req).await
}

async fn ready(State(s): State<AdminState>) -> Response {
    if s.broker.is_closed() {
        (StatusCode::SERVICE_UNAVAILABLE, "closing\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

fn error_response(e: Error) -> Response {
    let status = match e.kind() {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        axum::Json(serde_json::json!({ "error": e.to_string(), "kind": e.kind().as_str() })),
    )
        .into_response()
}

async fn streams(State(s): State<AdminState>) -> Response {
    match s.broker.stats().await {
        Ok(stats) => axum::Json(stats).into_response(),
        Err(e) => error_response(e),
    }
}

async fn stream(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    match s.broker.stream_stats(&name).await {
        Ok(stats) => axum::Json(stats).into_response(),
        Err(e) => error_response(e),
    }
}

async fn render_metrics(State(s): State<AdminState>) -> Response {
    match &s.prometheus {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "metrics are not enabled in this process\n",
        )
            .into_response(),
    }
}

//! Runtime control of chaos in a running service (seed 000's production middleware): an HTTP
//! router over a [`Faults`] registry.
//!
//! | method and path | does |
//! |---|---|
//! | `POST /admin/chaos/enable` | starts injecting |
//! | `POST /admin/chaos/disable` | stops injecting |
//! | `POST /admin/chaos/rate` `{"rate": 0.05}` | sets the failure rate (0 to 1; 400 otherwise) |
//! | `POST /admin/chaos/targets` `{"groups": ["billing"]}` | restricts injection to these groups (`[]`: all) |
//! | `GET /admin/chaos` | the state ([`FaultsState`]) as JSON |
//!
//! Every mutation is a POST and answers with the new state; any other method on these paths
//! answers 405. Serve it on loopback ([`serve`] binds `127.0.0.1` unless told otherwise): it
//! has no authentication.
//!
//! ```no_run
//! use squall_chaos::{control, faults::Faults, rng::Seed};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn f() -> std::io::Result<()> {
//! let faults = Faults::production(Seed::from_env_or_random()); // disabled, rate 1 %
//! let (addr, server) = control::serve(faults.clone(), None, CancellationToken::new()).await?;
//! println!("chaos control on http://{addr}/admin/chaos");
//! # server.await.ok(); Ok(()) }
//! ```

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::faults::{Faults, FaultsState};
use crate::proxy::api::loopback;

/// The body of `POST /admin/chaos/rate`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateBody {
    /// Probability multiplier, 0 to 1.
    pub rate: f64,
}

/// The body of `POST /admin/chaos/targets`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetsBody {
    /// Groups to inject into (empty: all).
    pub groups: Vec<String>,
}

/// The routes over `faults`, for serving or nesting in a service's own admin router.
pub fn router(faults: Faults) -> Router {
    Router::new()
        .route("/admin/chaos", get(state))
        .route("/admin/chaos/enable", post(enable))
        .route("/admin/chaos/disable", post(disable))
        .route("/admin/chaos/rate", post(rate))
        .route("/admin/chaos/targets", post(targets))
        .with_state(faults)
}

/// Serves [`router`] on `addr` (default `127.0.0.1:0`) until `shutdown` is cancelled. Returns the
/// bound address and the server task.
pub async fn serve(
    faults: Faults,
    addr: Option<SocketAddr>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr.unwrap_or_else(|| loopback(0))).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        axum::serve(listener, router(faults))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    Ok((bound, task))
}

async fn state(State(f): State<Faults>) -> Json<FaultsState> {
    Json(f.state())
}

async fn enable(State(f): State<Faults>) -> Json<FaultsState> {
    f.enable();
    tracing::warn!("chaos injection enabled over HTTP");
    Json(f.state())
}

async fn disable(State(f): State<Faults>) -> Json<FaultsState> {
    f.disable();
    tracing::info!("chaos injection disabled over HTTP");
    Json(f.state())
}

async fn rate(State(f): State<Faults>, Json(body): Json<RateBody>) -> Response {
    match f.set_rate(body.rate) {
        Ok(()) => Json(f.state()).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

async fn targets(State(f): State<Faults>, Json(body): Json<TargetsBody>) -> Json<FaultsState> {
    f.set_targets(body.groups);
    Json(f.state())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::probe::http;
    use crate::rng::Seed;
    use crate::rules::{Point, Site, Verdict};

    const T: Duration = Duration::from_secs(10);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_admin_api_switches_chaos_and_refuses_wrong_methods() {
        let faults = Faults::production(Seed::new(1));
        let stop = CancellationToken::new();
        let (addr, server) = serve(faults.clone(), None, stop.clone()).await.unwrap();
        assert!(addr.ip().is_loopback(), "loopback by default");
        let url = |p: &str| format!("http://{addr}/admin/chaos{p}");

        let r = http("GET", &url(""), None, T).await.unwrap();
        assert_eq!(r.status, 200);
        let st: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(st["enabled"], false, "production chaos starts disabled");
        assert_eq!(st["rate"], 0.01, "with a 1 % failure rate");

        for (m, p) in [
            ("GET", "/enable"),
            ("PUT", "/enable"),
            ("GET", "/disable"),
            ("DELETE", "/rate"),
            ("GET", "/targets"),
            ("POST", ""),
        ] {
            let r = http(m, &url(p), None, T).await.unwrap();
            assert_eq!(r.status, 405, "{m} /admin/chaos{p} must be refused");
        }
        assert!(!faults.is_enabled(), "refused requests change nothing");

        assert_eq!(
            http("POST", &url("/enable"), None, T).await.unwrap().status,
            200
        );
        assert!(faults.is_enabled());
        let r = http("POST", &url("/rate"), Some(r#"{"rate":1.0}"#), T)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(faults.rate(), 1.0);
        let bad = http("POST", &url("/rate"), Some(r#"{"rate":2}"#), T)
            .await
            .unwrap();
        assert_eq!(bad.status, 400);
        assert_eq!(faults.rate(), 1.0, "an invalid rate is not applied");
        let r = http(
            "POST",
            &url("/targets"),
            Some(r#"{"groups":["billing"]}"#),
            T,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        let spared = Site::new(Point::Publish).group(Some("search"));
        assert_eq!(
            faults.decide(&spared),
            Verdict::Pass,
            "a group outside the targets is spared"
        );
        let hit = Site::new(Point::Publish).group(Some("billing"));
        assert_ne!(
            faults.decide(&hit),
            Verdict::Pass,
            "rate 1 on a target group injects"
        );
        assert_eq!(
            http("POST", &url("/disable"), None, T)
                .await
                .unwrap()
                .status,
            200
        );
        assert_eq!(faults.decide(&hit), Verdict::Pass);

        stop.cancel();
        tokio::time::timeout(T, server)
            .await
            .expect("stops")
            .unwrap()
            .unwrap();
    }
}

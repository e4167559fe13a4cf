//! The fault proxy's HTTP API (JSON), for scripts and game days:
//!
//! | method and path | does |
//! |---|---|
//! | `GET /proxies` | lists proxies |
//! | `POST /proxies` `{name, listen?, upstream}` | creates one (`listen` defaults to `127.0.0.1:0`); 201, 409 if the name exists |
//! | `GET /proxies/{name}` | one proxy |
//! | `DELETE /proxies/{name}` | stops and removes it; 204 |
//! | `GET /proxies/{name}/faults` | its faults |
//! | `POST /proxies/{name}/faults` `{name, kind, direction?, ...}` | adds a fault ([`ProxyFault`]); 201, 409 if the name exists |
//! | `DELETE /proxies/{name}/faults/{fault}` | removes it; 204 |
//! | `POST /proxies/{name}/down`, `/up` | stops or resumes listening |
//! | `POST /proxies/{name}/reset_connections` | resets its connections once |
//! | `POST /reset` | removes every fault and brings every proxy up; 204 |
//!
//! Any other method on these paths answers 405. Errors are `{"error": "..."}` with 400, 404 or
//! 409. Serve it on loopback ([`ProxyApi::serve`] with [`loopback`]).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Proxy, ProxyError, ProxyFault, ProxyHandle, ProxyStats};
use crate::rng::Seed;

/// `127.0.0.1:port`: where control APIs listen by default.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The body of `POST /proxies`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProxy {
    /// Unique name.
    pub name: String,
    /// Where to listen (default `127.0.0.1:0`).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// `host:port` to connect to.
    pub upstream: String,
}

/// What the API reports about a proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyInfo {
    /// Name.
    pub name: String,
    /// Actual listening address.
    pub listen: SocketAddr,
    /// Upstream address.
    pub upstream: String,
    /// Whether it is down.
    pub down: bool,
    /// Installed faults.
    pub faults: Vec<ProxyFault>,
    /// Counters (not read back).
    #[serde(skip_deserializing)]
    pub stats: ProxyStats,
}

impl ProxyInfo {
    fn of(p: &ProxyHandle) -> Self {
        ProxyInfo {
            name: p.name().to_string(),
            listen: p.listen_addr(),
            upstream: p.upstream().to_string(),
            down: p.is_down(),
            faults: p.faults(),
            stats: p.stats(),
        }
    }
}

/// A set of named proxies and the HTTP API over them. Cheap to clone.
#[derive(Clone)]
pub struct ProxyApi {
    seed: Seed,
    proxies: Arc<Mutex<BTreeMap<String, ProxyHandle>>>,
}

impl ProxyApi {
    /// An empty set; proxies it creates draw their randomness from `seed`.
    pub fn new(seed: Seed) -> Self {
        ProxyApi {
            seed,
            proxies: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, ProxyHandle>> {
        self.proxies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates and starts a proxy.
    pub async fn create(&self, req: CreateProxy) -> Result<ProxyHandle, ProxyError> {
        if req.name.is_empty() {
            return Err(ProxyError::Invalid("a proxy needs a name".into()));
        }
        if self.lock().contains_key(&req.name) {
            return Err(ProxyError::Exists(format!("proxy `{}`", req.name)));
        }
        let listen = req.listen.unwrap_or_else(|| loopback(0));
        let p = Proxy::new(listen, req.upstream)
            .name(req.name.clone())
            .seed(self.seed)
            .spawn()
            .await?;
        let mut map = self.lock();
        if map.contains_key(&req.name) {
            return Err(ProxyError::Exists(format!("proxy `{}`", req.name)));
        }
        map.insert(req.name, p.clone());
        Ok(p)
    }

    /// The proxy called `name`.
    pub fn get(&self, name: &str) -> Option<ProxyHandle> {
        self.lock().get(name).cloned()
    }

    fn find(&self, name: &str) -> Result<ProxyHandle, ProxyError> {
        self.get(name)
            .ok_or_else(|| ProxyError::NotFound(format!("proxy `{name}`")))
    }

    /// Stops and forgets the proxy called `name`.
    pub async fn delete(&self, name: &str) -> Result<(), ProxyError> {
        let p = self.lock().remove(name);
        match p {
            Some(p) => {
                p.stop().await;
                Ok(())
            }
            None => Err(ProxyError::NotFound(format!("proxy `{name}`"))),
        }
    }

    /// Removes every fault and brings every proxy up.
    pub async fn reset(&self) -> Result<(), ProxyError> {
        let all: Vec<ProxyHandle> = self.lock().values().cloned().collect();
        for p in all {
            p.clear_faults();
            p.up().await?;
        }
        Ok(())
    }

    /// The routes, for serving or nesting in another router.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/proxies", get(list).post(create))
            .route("/proxies/{name}", get(show).delete(delete))
            .route("/proxies/{name}/faults", get(faults).post(add_fault))
            .route(
                "/proxies/{name}/faults/{fault}",
                axum::routing::delete(remove_fault),
            )
            .route("/proxies/{name}/down", post(down))
            .route("/proxies/{name}/up", post(up))
            .route("/proxies/{name}/reset_connections", post(reset_connections))
            .route("/reset", post(reset_all))
            .with_state(self.clone())
    }

    /// Serves the API on `listener` until `shutdown` is cancelled, then stops every proxy.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let r = axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        let all: Vec<ProxyHandle> = std::mem::take(&mut *self.lock()).into_values().collect();
        for p in all {
            p.stop().await;
        }
        r
    }
}

/// A [`ProxyError`] as an HTTP response.
struct ApiError(ProxyError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            ProxyError::Exists(_) => StatusCode::CONFLICT,
            ProxyError::NotFound(_) => StatusCode::NOT_FOUND,
            ProxyError::Invalid(_) | ProxyError::Io(_) => StatusCode::BAD_REQUEST,
        };
        (
            status,
            Json(serde_json::json!({ "error": self.0.to_string() })),
        )
            .into_response()
    }
}

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> Self {
        ApiError(e)
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn list(State(api): State<ProxyApi>) -> Json<Vec<ProxyInfo>> {
    let all: Vec<ProxyHandle> = api.lock().values().cloned().collect();
    Json(all.iter().map(ProxyInfo::of).collect())
}

async fn create(
    State(api): State<ProxyApi>,
    Json(req): Json<CreateProxy>,
) -> ApiResult<(StatusCode, Json<ProxyInfo>)> {
    let p = api.create(req).await?;
    Ok((StatusCode::CREATED, Json(ProxyInfo::of(&p))))
}

async fn show(State(api): State<ProxyApi>, Path(name): Path<String>) -> ApiResult<Json<ProxyInfo>> {
    Ok(Json(ProxyInfo::of(&api.find(&name)?)))
}

async fn delete(State(api): State<ProxyApi>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    api.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn faults(
    State(api): State<ProxyApi>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<ProxyFault>>> {
    Ok(Json(api.find(&name)?.faults()))
}

async fn add_fault(
    State(api): State<ProxyApi>,
    Path(name): Path<String>,
    Json(fault): Json<ProxyFault>,
) -> ApiResult<(StatusCode, Json<ProxyFault>)> {
    api.find(&name)?.add_fault(fault.clone())?;
    Ok((StatusCode::CREATED, Json(fault)))
}

async fn remove_fault(
    State(api): State<ProxyApi>,
    Path((name, fault)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    if api.find(&name)?.remove_fault(&fault) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ProxyError::NotFound(format!("fault `{fault}` on proxy `{name}`")).into())
    }
}

async fn down(State(api): State<ProxyApi>, Path(name): Path<String>) -> ApiResult<Json<ProxyInfo>> {
    let p = api.find(&name)?;
    p.down().await;
    Ok(Json(ProxyInfo::of(&p)))
}

async fn up(State(api): State<ProxyApi>, Path(name): Path<String>) -> ApiResult<Json<ProxyInfo>> {
    let p = api.find(&name)?;
    p.up().await?;
    Ok(Json(ProxyInfo::of(&p)))
}

async fn reset_connections(
    State(api): State<ProxyApi>,
    Path(name): Path<String>,
) -> ApiResult<Json<ProxyInfo>> {
    let p = api.find(&name)?;
    p.reset_connections();
    Ok(Json(ProxyInfo::of(&p)))
}

async fn reset_all(State(api): State<ProxyApi>) -> ApiResult<StatusCode> {
    api.reset().await?;
    Ok(StatusCode::NO_CONTENT)
}

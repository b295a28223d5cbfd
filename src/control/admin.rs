//! The admin API (HTTP/JSON) and the /metrics endpoint.
//!
//! Owns: request parsing, authentication (a bearer token compared in constant time), and
//! mapping refusals to 4xx JSON errors. Every change goes through `State`, which validates
//! it whole before applying anything.
//! Must not touch: backend state directly.

use super::state::Refusal;
use super::{Control, DEFAULT_DRAIN_TIMEOUT};
use crate::backend::Backend;
use crate::snapshot::Shared;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone)]
struct App {
    control: Control,
    token: Option<Arc<String>>,
    acl: Arc<crate::routes::SourceAcl>,
}

/// Who may use the admin API: the bearer token (None: no token) and the source rules.
pub struct Access {
    pub token: Option<String>,
    pub acl: crate::routes::SourceAcl,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn refused(r: Refusal) -> Response {
    let status = match &r {
        Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
        Refusal::NotFound(_) => StatusCode::NOT_FOUND,
        Refusal::Conflict(_) => StatusCode::CONFLICT,
        Refusal::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, r.message())
}

fn backend_json(b: &Backend) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    json!({
        "pool": b.pool,
        "addr": b.addr.to_string(),
        "weight": b.weight(),
        // Below `weight` while the backend is in slow start (rounded to 0.01).
        "effective_weight": (b.effective_weight() * 100.0).round() / 100.0,
        "max_connections": b.max_connections(),
        "state": b.state().as_str(),
        "active_connections": b.active().max(0),
        "connections_total": b.stats.connections.load(Relaxed),
        // A drain: when it began (Unix seconds; since this process started it, for one
        // restored from the state file), and the connections it still waits for.
        "draining_since": b.draining_since(),
        "protected": b.protection_left().is_some(),
        "protection_expires_in": b.protection_left(),
    })
}

/// A backend's scale-in protection, as `GET`/`PUT .../protection` answer it.
fn protection_json(b: &Backend) -> Value {
    let left = b.protection_left();
    json!({
        "pool": b.pool,
        "addr": b.addr.to_string(),
        "enabled": left.is_some(),
        "expires_in": left.map(|s| crate::config::format_duration(std::time::Duration::from_secs(s))),
        "expires_at": left.map(|s| crate::backend::unix_now() + s),
    })
}

/// Equal-time comparison: how long it takes says nothing of where the inputs differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `[admin] allow`: a source outside the rules gets 403 on every path, probes included.
async fn admit_source(
    State(app): State<App>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if !app.acl.is_empty() && !app.acl.admits(peer.ip()) {
        return error(
            StatusCode::FORBIDDEN,
            "this address may not use the admin API ([admin] allow)",
        );
    }
    next.run(req).await
}

async fn authenticate(
    State(app): State<App>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    if let Some(token) = &app.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same_secret(given.as_bytes(), token.as_bytes()) {
            let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("static header"),
            );
            return r;
        }
    }
    next.run(req).await
}

async fn list(State(app): State<App>) -> Response {
    let s = app.control.lock();
    let pools: Vec<Value> = s
        .members
        .iter()
        .map(|(name, list)| {
            let algorithm = s
                .config
                .pools
                .get(name)
                .map(|p| format!("{:?}", p.algorithm))
                .unwrap_or_default();
            json!({
                "name": name,
                "algorithm": toml_name(&algorithm),
                "backends": list.iter().map(|b| backend_json(b)).collect::<Vec<_>>(),
            })
        })
        .collect();
    axum::Json(json!({ "pools": pools })).into_response()
}

/// `RoundRobin` → `round_robin`, as the config spells it.
fn toml_name(debug: &str) -> String {
    let mut out = String::new();
    for (i, c) in debug.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    addr: String,
    weight: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtectionBody {
    enabled: bool,
    expires_in: Option<String>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("bad JSON body: {e}"),
        ))
    })
}

async fn add(State(app): State<App>, Path(pool): Path<String>, body: Bytes) -> Response {
    let req: AddBody = match parse(&body) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let added = app.control.lock().add(&pool, &req.addr, req.weight);
    match added {
        Ok(b) => {
            app.control.watch(b.clone());
            (StatusCode::CREATED, axum::Json(backend_json(&b))).into_response()
        }
        Err(r) => refused(r),
    }
}

async fn drain(State(app): State<App>, Path((pool, addr)): Path<(String, String)>) -> Response {
    match app.control.lock().drain(&pool, &addr) {
        Ok(b) => (StatusCode::ACCEPTED, axum::Json(backend_json(&b))).into_response(),
        Err(r) => refused(r),
    }
}

async fn get_protection(
    State(app): State<App>,
    Path((pool, addr)): Path<(String, String)>,
) -> Response {
    let found = app.control.lock().backend(&pool, &addr);
    match found {
        Ok(b) => axum::Json(protection_json(&b)).into_response(),
        Err(r) => refused(r),
    }
}

async fn put_protection(
    State(app): State<App>,
    Path((pool, addr)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let req: ProtectionBody = match parse(&body) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let expires_in = match req.expires_in.as_deref().map(crate::config::parse_duration) {
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("expires_in: {e}")),
        None => None,
    };
    let set = app
        .control
        .lock()
        .protect(&pool, &addr, req.enabled, expires_in);
    match set {
        Ok((b, _)) => axum::Json(protection_json(&b)).into_response(),
        Err(r) => refused(r),
    }
}

async fn ready(State(app): State<App>, Path((pool, addr)): Path<(String, String)>) -> Response {
    match app.control.lock().ready(&pool, &addr) {
        Ok(b) => axum::Json(backend_json(&b)).into_response(),
        Err(r) => refused(r),
    }
}

async fn remove(
    State(app): State<App>,
    Path((pool, addr)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(k) = q.keys().find(|k| k.as_str() != "drain_timeout") {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unknown query parameter {:?}", super::state::shown(k)),
        );
    }
    let timeout = match q.get("drain_timeout") {
        Some(t) => match crate::config::parse_duration(t) {
            Ok(d) => d,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("drain_timeout: {e}")),
        },
        None => DEFAULT_DRAIN_TIMEOUT,
    };
    let removed = app.control.lock().remove(&pool, &addr);
    match removed {
        Ok((b, departure)) => {
            let mut body = backend_json(&b);
            match departure {
                Some(d) => {
                    app.control.remove_after_drain(b.clone(), d, timeout);
                    body["drain_timeout"] = json!(crate::config::format_duration(timeout));
                }
                // Already being deleted: that removal and its drain timeout go on.
                None => body["already_removing"] = json!(true),
            }
            (StatusCode::ACCEPTED, axum::Json(body)).into_response()
        }
        Err(r) => refused(r),
    }
}

async fn weight(
    State(app): State<App>,
    Path((pool, addr)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let req: WeightBody = match parse(&body) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    match app.control.lock().set_weight(&pool, &addr, req.weight) {
        Ok(b) => axum::Json(backend_json(&b)).into_response(),
        Err(r) => refused(r),
    }
}

/// Ready once every worker's listeners accept (set by the server after the data plane
/// starts), and no longer once a stop begins, so that a load balancer in front (a kubelet
/// readiness probe) takes this instance out before it drains. No token: it reveals counts.
async fn readyz(State(app): State<App>) -> Response {
    let shared = app.control.lock().shared.clone();
    use std::sync::atomic::Ordering::Relaxed;
    let listeners = shared.snapshot.load().listeners.len();
    let (code, status) = if shared.stopping.load(Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping")
    } else if shared.ready.load(Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    };
    (
        code,
        axum::Json(json!({ "status": status, "listeners": listeners })),
    )
        .into_response()
}

async fn healthz(State(app): State<App>) -> Response {
    let empty = app.control.lock().pools_without_backends();
    if empty.is_empty() {
        axum::Json(json!({ "status": "ok" })).into_response()
    } else {
        let reason = format!("no routable backend in pool(s): {}", empty.join(", "));
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "unavailable", "reason": reason })),
        )
            .into_response()
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

/// The admin API. `/healthz` and `/readyz` need no token (probes carry none) and reveal
/// only states, counts and pool names; everything else needs it. `[admin] allow` applies to
/// all.
pub fn router(control: Control, access: Access) -> Router {
    let app = App {
        control,
        token: access.token.map(Arc::new),
        acl: Arc::new(access.acl),
    };
    let probes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    Router::new()
        .route("/backends", get(list))
        .route("/pools/{pool}/backends", post(add))
        .route("/pools/{pool}/backends/{addr}/drain", post(drain))
        .route("/pools/{pool}/backends/{addr}/ready", post(ready))
        .route(
            "/pools/{pool}/backends/{addr}/protection",
            get(get_protection).put(put_protection),
        )
        .route("/pools/{pool}/backends/{addr}", delete(remove))
        .route("/pools/{pool}/backends/{addr}/weight", put(weight))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), authenticate))
        .merge(probes)
        .layer(middleware::from_fn_with_state(app.clone(), admit_source))
        .with_state(app)
}

/// GET /metrics in the Prometheus text format.
pub fn metrics_router(shared: Arc<Shared>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let shared = shared.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    crate::metrics::render(&shared),
                )
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_compare() {
        assert!(super::same_secret(b"abc", b"abc"));
        assert!(!super::same_secret(b"abc", b"abd"));
        assert!(!super::same_secret(b"abc", b"abcd"));
        assert_eq!(super::toml_name("LeastConn"), "least_conn");
    }
}

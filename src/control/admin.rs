//! The admin API (HTTP/JSON) and the /metrics endpoint.
//!
//! Owns: request parsing, authentication (a bearer token compared in constant time),
//! mapping refusals to 4xx JSON errors, the OpenAPI document (from the handlers'
//! annotations) and the status page's files. Every change goes through `State`, which validates
//! it whole before applying anything.
//! Must not touch: backend state directly.

use super::state::Refusal;
use super::views::*;
use super::{Control, DEFAULT_DRAIN_TIMEOUT};
use crate::snapshot::Shared;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone)]
struct App {
    control: Control,
    token: Option<Arc<String>>,
    acl: Arc<crate::routes::SourceAcl>,
    /// `GET /openapi.json`, rendered once.
    openapi: Arc<String>,
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
        Refusal::Unavailable(_) => {
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, r.message());
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            return r;
        }
    };
    error(status, r.message())
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

/// Path parameters, with a malformed one (bad percent-encoding, not UTF-8) refused as a
/// JSON 400 like every other refusal, not axum's plain-text one.
struct Params<T>(T);

impl<T, S> axum::extract::FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Response;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(Params(v)),
            Err(e) => Err(error(StatusCode::BAD_REQUEST, e.body_text())),
        }
    }
}

/// The query string as pairs, refused as a JSON 400 when it does not decode.
struct QueryPairs(HashMap<String, String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for QueryPairs {
    type Rejection = Response;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        match Query::<HashMap<String, String>>::from_request_parts(parts, state).await {
            Ok(Query(q)) => Ok(QueryPairs(q)),
            Err(e) => Err(error(StatusCode::BAD_REQUEST, e.body_text())),
        }
    }
}

fn json<T: serde::Serialize>(status: StatusCode, body: T) -> Response {
    (status, axum::Json(body)).into_response()
}

fn pools_view(s: &super::state::State) -> BackendsView {
    BackendsView {
        pools: s
            .members
            .iter()
            .map(|(name, list)| PoolView {
                name: name.clone(),
                algorithm: algorithm_of(s, name),
                backends: list.iter().map(|b| BackendView::of(b)).collect(),
            })
            .collect(),
    }
}

fn algorithm_of(s: &super::state::State, pool: &str) -> String {
    s.config
        .pools
        .get(pool)
        .map(|p| toml_name(&format!("{:?}", p.algorithm)))
        .unwrap_or_default()
}

/// Every pool and its backends.
#[utoipa::path(get, path = "/backends", tag = "backends",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every pool with its backends", body = BackendsView),
        Guarded,
    ))]
async fn list(State(app): State<App>) -> Response {
    let view = pools_view(&app.control.lock());
    json(StatusCode::OK, view)
}

/// What the status page draws: per listener and per backend the counters and gauges, and
/// the process's uptime and version.
#[utoipa::path(get, path = "/stats", tag = "status",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Counters and gauges", body = Stats),
        Guarded,
    ))]
async fn stats(State(app): State<App>) -> Response {
    let s = app.control.lock();
    let view = Stats::gather(
        &s.members,
        |p| algorithm_of(&s, p),
        &s.shared,
        app.control.started,
        s.shared.worker_connections.len(),
    );
    drop(s);
    json(StatusCode::OK, view)
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("bad JSON body: {e}"),
        ))
    })
}

/// Adds a backend; it starts as `starting` and takes traffic once its checks pass.
#[utoipa::path(post, path = "/pools/{pool}/backends", tag = "backends",
    security(("bearer" = [])),
    params(("pool" = String, Path, description = "Pool name")),
    request_body = AddBody,
    responses(
        (status = 201, description = "Added", body = BackendView),
        Guarded,
        Changes,
    ))]
async fn add(State(app): State<App>, Params(pool): Params<String>, body: Bytes) -> Response {
    let req: AddBody = match parse(&body) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let added = app
        .control
        .lock()
        .add(&pool, &req.addr, req.weight, req.backup);
    match added {
        Ok(b) => {
            app.control.watch(b.clone());
            json(StatusCode::CREATED, BackendView::of(&b))
        }
        Err(r) => refused(r),
    }
}

/// Starts rebalancing a pool now: its backends over their share (by more than the pool's
/// `rebalance.tolerance`, 0.2 without the key) get idle connections closed, at the pool's
/// `rebalance.rate` (20/s), until each is back at its share. Clients that reconnect land on
/// the others. Bytes in flight are never cut.
#[utoipa::path(post, path = "/pools/{pool}/rebalance", tag = "backends",
    security(("bearer" = [])),
    params(("pool" = String, Path, description = "Pool name")),
    responses(
        (status = 202, description = "Rebalancing", body = super::views::RebalanceView),
        Guarded,
        Lookup,
    ))]
async fn rebalance(State(app): State<App>, Params(pool): Params<String>) -> Response {
    match app.control.rebalance_now(&pool) {
        Some(backends) => json(
            StatusCode::ACCEPTED,
            super::views::RebalanceView {
                pool,
                ends_within_seconds: super::rebalance::MANUAL_LIMIT.as_secs(),
                backends,
            },
        ),
        None => error(StatusCode::NOT_FOUND, format!("no pool {pool:?}")),
    }
}

/// Drains a backend: no new connections; open ones go on until they end. `ready` undoes it.
#[utoipa::path(post, path = "/pools/{pool}/backends/{addr}/drain", tag = "backends",
    security(("bearer" = [])),
    params(BackendPath),
    responses(
        (status = 202, description = "Draining", body = BackendView),
        Guarded,
        Changes,
    ))]
async fn drain(State(app): State<App>, Params((pool, addr)): Params<(String, String)>) -> Response {
    match app.control.lock().drain(&pool, &addr) {
        Ok(b) => json(StatusCode::ACCEPTED, BackendView::of(&b)),
        Err(r) => refused(r),
    }
}

/// A backend's scale-in protection.
#[utoipa::path(get, path = "/pools/{pool}/backends/{addr}/protection", tag = "backends",
    security(("bearer" = [])),
    params(BackendPath),
    responses(
        (status = 200, description = "Its protection", body = ProtectionView),
        Guarded,
        Lookup,
    ))]
async fn get_protection(
    State(app): State<App>,
    Params((pool, addr)): Params<(String, String)>,
) -> Response {
    let found = app.control.lock().backend(&pool, &addr);
    match found {
        Ok(b) => json(StatusCode::OK, ProtectionView::of(&b)),
        Err(r) => refused(r),
    }
}

/// Turns scale-in protection on (optionally for a while) or off: the scaler does not pick a
/// protected backend to remove.
#[utoipa::path(put, path = "/pools/{pool}/backends/{addr}/protection", tag = "backends",
    security(("bearer" = [])),
    params(BackendPath),
    request_body = ProtectionBody,
    responses(
        (status = 200, description = "Its protection now", body = ProtectionView),
        Guarded,
        Changes,
    ))]
async fn put_protection(
    State(app): State<App>,
    Params((pool, addr)): Params<(String, String)>,
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
        Ok((b, _)) => json(StatusCode::OK, ProtectionView::of(&b)),
        Err(r) => refused(r),
    }
}

/// Puts a drained (or starting) backend back: it takes new connections again as its checks
/// allow.
#[utoipa::path(post, path = "/pools/{pool}/backends/{addr}/ready", tag = "backends",
    security(("bearer" = [])),
    params(BackendPath),
    responses(
        (status = 200, description = "Back in service", body = BackendView),
        Guarded,
        Changes,
    ))]
async fn ready(State(app): State<App>, Params((pool, addr)): Params<(String, String)>) -> Response {
    match app.control.lock().ready(&pool, &addr) {
        Ok(b) => json(StatusCode::OK, BackendView::of(&b)),
        Err(r) => refused(r),
    }
}

/// Deletes a backend: it drains, then leaves once its connections end or `drain_timeout`
/// passes (the rest are then closed).
#[utoipa::path(delete, path = "/pools/{pool}/backends/{addr}", tag = "backends",
    security(("bearer" = [])),
    params(
        BackendPath,
        ("drain_timeout" = Option<String>, Query, description = "How long its connections get (a duration, default 5m)", example = "30s", pattern = r"^([0-9]{1,4}(us|ms|s|m)|[0-9]{1,2}h|([0-9]|[12][0-9]|30)d)$"),
    ),
    responses(
        (status = 202, description = "Draining, to be removed", body = RemovalView),
        Guarded,
        Changes,
    ))]
async fn remove(
    State(app): State<App>,
    Params((pool, addr)): Params<(String, String)>,
    QueryPairs(q): QueryPairs,
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
            let mut view = RemovalView {
                backend: BackendView::of(&b),
                drain_timeout: None,
                already_removing: None,
            };
            match departure {
                Some(d) => {
                    app.control.remove_after_drain(b.clone(), d, timeout);
                    view.drain_timeout = Some(crate::config::format_duration(timeout));
                }
                // Already being deleted: that removal and its drain timeout go on.
                None => view.already_removing = Some(true),
            }
            json(StatusCode::ACCEPTED, view)
        }
        Err(r) => refused(r),
    }
}

/// Sets a backend's weight (0 takes it out of the rotation, like a drain that keeps it).
#[utoipa::path(put, path = "/pools/{pool}/backends/{addr}/weight", tag = "backends",
    security(("bearer" = [])),
    params(BackendPath),
    request_body = WeightBody,
    responses(
        (status = 200, description = "The new weight applies", body = BackendView),
        Guarded,
        Changes,
    ))]
async fn weight(
    State(app): State<App>,
    Params((pool, addr)): Params<(String, String)>,
    body: Bytes,
) -> Response {
    let req: WeightBody = match parse(&body) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    match app.control.lock().set_weight(&pool, &addr, req.weight) {
        Ok(b) => json(StatusCode::OK, BackendView::of(&b)),
        Err(r) => refused(r),
    }
}

/// Ready once every worker's listeners accept (set by the server after the data plane
/// starts), and no longer once a stop begins, so that a load balancer in front (a kubelet
/// readiness probe) takes this instance out before it drains. No token: it reveals counts.
#[utoipa::path(get, path = "/readyz", tag = "probes",
    responses(
        (status = 200, description = "Ready", body = ReadyView),
        (status = 503, description = "Starting or stopping", body = ReadyView),
        (status = 403, description = "Source not allowed ([admin] allow)", body = ErrorBody),
    ))]
async fn readyz(State(app): State<App>) -> Response {
    let shared = app.control.lock().shared.clone();
    use std::sync::atomic::Ordering::Relaxed;
    let listeners = shared.snapshot.load().listeners.len() as u64;
    let (code, status) = if shared.stopping.load(Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping")
    } else if shared.ready.load(Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    };
    json(
        code,
        ReadyView {
            status: status.into(),
            listeners,
        },
    )
}

/// OK while every pool has a routable backend. No token: it reveals only pool names.
#[utoipa::path(get, path = "/healthz", tag = "probes",
    responses(
        (status = 200, description = "Every pool can route", body = HealthView),
        (status = 503, description = "Some pool has no routable backend", body = HealthView),
        (status = 403, description = "Source not allowed ([admin] allow)", body = ErrorBody),
    ))]
async fn healthz(State(app): State<App>) -> Response {
    let empty = app.control.lock().pools_without_backends();
    if empty.is_empty() {
        json(
            StatusCode::OK,
            HealthView {
                status: "ok".into(),
                reason: None,
            },
        )
    } else {
        let reason = format!("no routable backend in pool(s): {}", empty.join(", "));
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            HealthView {
                status: "unavailable".into(),
                reason: Some(reason),
            },
        )
    }
}

/// The status page: one HTML page that asks for the token and draws `/stats` every second.
#[utoipa::path(get, path = "/", tag = "status",
    responses(
        (status = 200, description = "The status page", content_type = "text/html", body = String),
        (status = 403, description = "Source not allowed ([admin] allow)", body = ErrorBody),
    ))]
async fn status_page() -> Response {
    static_file("text/html; charset=utf-8", STATUS_PAGE)
}

/// The status page's script (kept apart so the page's CSP can forbid inline script).
#[utoipa::path(get, path = "/status.js", tag = "status",
    responses(
        (status = 200, description = "The status page's script", content_type = "text/javascript", body = String),
        (status = 403, description = "Source not allowed ([admin] allow)", body = ErrorBody),
    ))]
async fn status_script() -> Response {
    static_file("text/javascript; charset=utf-8", STATUS_SCRIPT)
}

/// The status page's style sheet (kept apart so the page's CSP can forbid inline style).
#[utoipa::path(get, path = "/status.css", tag = "status",
    responses(
        (status = 200, description = "The status page's style sheet", content_type = "text/css", body = String),
        (status = 403, description = "Source not allowed ([admin] allow)", body = ErrorBody),
    ))]
async fn status_style() -> Response {
    static_file("text/css; charset=utf-8", STATUS_STYLE)
}

/// One of the status page's files: revalidated on every load (a new binary serves a new
/// page), script and style only from this origin (nothing inline: status.js and status.css
/// are files), never inside another site's frame.
fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// This document: the admin API's OpenAPI 3.1 description.
#[utoipa::path(get, path = "/openapi.json", tag = "status",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object),
        (status = 403, description = "Source not allowed ([admin] allow)", body = ErrorBody),
    ))]
async fn openapi_json(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        app.openapi.as_ref().clone(),
    )
        .into_response()
}

/// The path of one backend, as the OpenAPI document describes it (the handlers take it as
/// `Params<(String, String)>`).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read by the OpenAPI derive only
struct BackendPath {
    /// Pool name
    pool: String,
    /// Backend address, ip:port
    addr: String,
}

/// The refusals every guarded operation may answer with.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // read by the OpenAPI derive only
enum Guarded {
    /// Missing or wrong token
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Source not allowed ([admin] allow)
    #[response(status = 403)]
    Forbidden(ErrorBody),
}

/// The refusals of an operation that changes a backend: nothing was changed.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum Changes {
    /// A malformed path, body, address, weight or duration
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No such pool or backend
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// Not now: the backend is being removed, or already a member
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The state file could not be written
    #[response(status = 500)]
    Internal(ErrorBody),
    /// An upgrade is handing this process over: retry in a moment (`Retry-After: 1`)
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The refusals of an operation that reads one backend.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum Lookup {
    /// A malformed path
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No such pool or backend
    #[response(status = 404)]
    NotFound(ErrorBody),
}

const STATUS_PAGE: &str = include_str!("status/index.html");
const STATUS_SCRIPT: &str = include_str!("status/status.js");
const STATUS_STYLE: &str = include_str!("status/status.css");

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "ringlb admin API",
        description = "Runtime changes to a running ringlb: list, add, drain, ready, weigh and \
            delete backends, scale-in protection, probes and the status page's counters. \
            Every change is validated whole before anything applies; refusals are 4xx with \
            `{\"error\": ...}`. Send `Authorization: Bearer <token>` (the file `[admin] \
            token_file` names) except to the probes, the status page and this document.",
        license(name = "MIT OR Apache-2.0"),
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "backends", description = "Pool membership and backend state"),
        (name = "probes", description = "Liveness and readiness, without a token"),
        (name = "status", description = "The status page and its data"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The admin API and its OpenAPI document, built from the same annotated handlers (so the
/// document lists exactly what is routed). `/healthz`, `/readyz`, the status page and the
/// document need no token (probes carry none; the page asks for it) and reveal only states,
/// counts and pool names; everything else needs it. `[admin] allow` applies to all.
fn routes() -> (
    utoipa_axum::router::OpenApiRouter<App>,
    utoipa_axum::router::OpenApiRouter<App>,
) {
    use utoipa_axum::{router::OpenApiRouter, routes};
    let guarded = OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(stats))
        .routes(routes!(add))
        .routes(routes!(drain))
        .routes(routes!(ready))
        .routes(routes!(get_protection, put_protection))
        .routes(routes!(remove))
        .routes(routes!(weight))
        .routes(routes!(rebalance));
    let open = OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(status_page))
        .routes(routes!(status_script))
        .routes(routes!(status_style))
        .routes(routes!(openapi_json));
    (guarded, open)
}

/// The OpenAPI document of the admin API, as `GET /openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    let (guarded, open) = routes();
    let mut doc = utoipa_axum::router::OpenApiRouter::<App>::with_openapi(ApiDoc::openapi())
        .merge(guarded)
        .merge(open)
        .into_openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc
}

pub fn router(control: Control, access: Access) -> Router {
    let doc = openapi().to_json().unwrap_or_else(|_| "{}".into());
    let app = App {
        control,
        token: access.token.map(Arc::new),
        acl: Arc::new(access.acl),
        openapi: Arc::new(doc),
    };
    let (guarded, open) = routes();
    let (guarded, _) = guarded.split_for_parts();
    let (open, _) = open.split_for_parts();
    Router::new()
        .merge(guarded)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), authenticate))
        .merge(open)
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

    #[test]
    fn the_openapi_document_lists_every_route() {
        let doc = super::openapi();
        let paths: Vec<&String> = doc.paths.paths.keys().collect();
        for p in [
            "/backends",
            "/stats",
            "/pools/{pool}/backends",
            "/pools/{pool}/backends/{addr}",
            "/pools/{pool}/backends/{addr}/drain",
            "/pools/{pool}/backends/{addr}/ready",
            "/pools/{pool}/backends/{addr}/weight",
            "/pools/{pool}/backends/{addr}/protection",
            "/healthz",
            "/readyz",
            "/",
            "/openapi.json",
        ] {
            assert!(
                paths.iter().any(|x| x.as_str() == p),
                "{p} missing: {paths:?}"
            );
        }
    }
}

//! The admin HTTP API: readiness (with a manual drain switch), metrics (Prometheus text or
//! OpenMetrics, and a human-readable `/stats`), the running config, cluster state, log levels
//! ([`logging`]), server info, and updates of route configs and clusters (see docs/config.md for
//! the contract; `/help` lists it all). Answers are JSON, errors included (`{"error": ...,
//! "field": ..., "line": ..., "column": ...}`: a path the API does not have is a `404`, a method
//! a path does not take a `405` with an `Allow` header), except the plain-text ones meant for
//! people and scrapers, whose errors are JSON too. Write endpoints ask for the bearer token of `admin.token_file` when one is
//! configured ([`auth`]); the server itself bounds slow and idle clients, and those that read
//! none of their answers ([`crate::http_server`]).

mod auth;
mod logging;
mod stats;

pub use logging::LogControl;

use std::future::Future;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, StringRejection};
use axum::extract::{Extension, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{ClusterSpec, ConfigError, Position, RouteConfigSpec};
use crate::http_server::RequestDeadline;
use crate::proxy::{ProxyState, Readiness, UpdateError};
use crate::stats::ExpositionFormat;

/// Every endpoint, for `/help`: method, path, what it does.
const ENDPOINTS: [(&str, &str, &str); 16] = [
    ("GET", "/help", "this list"),
    (
        "GET",
        "/ready",
        "200 while serving; else 503 and why (starting, draining, failing health checks)",
    ),
    (
        "POST",
        "/healthcheck/fail",
        "make /ready answer 503 (drain this proxy from load balancers)",
    ),
    ("POST", "/healthcheck/ok", "undo /healthcheck/fail"),
    (
        "GET",
        "/server_info",
        "version, build, uptime, state, where the config came from",
    ),
    (
        "GET",
        "/metrics",
        "every series: Prometheus text, or OpenMetrics when the Accept header asks",
    ),
    (
        "GET",
        "/stats",
        "every series, one per line, histograms as percentiles; ?filter=<regex>",
    ),
    ("GET", "/logging", "the log filter in force"),
    (
        "POST",
        "/logging",
        "change the log filter: ?level=<level> or ?filter=<directives>",
    ),
    (
        "GET",
        "/config_dump",
        "the running config and each route config's version",
    ),
    (
        "GET",
        "/clusters",
        "per cluster and endpoint: health, ejections, requests, connections",
    ),
    (
        "PUT",
        "/route_configs/{name}",
        "replace a route config (YAML or JSON body; 404 if there is none of that name)",
    ),
    (
        "PUT",
        "/clusters/{name}",
        "replace (or add) a cluster (YAML or JSON body)",
    ),
    (
        "DELETE",
        "/clusters/{name}",
        "remove a cluster no route uses",
    ),
    ("", "", ""),
    (
        "",
        "",
        "POST, PUT and DELETE need `Authorization: Bearer <token>` when admin.token_file is set",
    ),
];

/// Serves the admin API on `listener` until `stop`.
pub(crate) async fn serve(listener: TcpListener, state: Arc<ProxyState>, stop: CancellationToken) {
    auth::warn_if_exposed(&state.config());
    let app = Router::new()
        .route("/help", get(help))
        .route("/ready", get(ready))
        .route("/healthcheck/fail", post(health_check_fail))
        .route("/healthcheck/ok", post(health_check_ok))
        .route("/server_info", get(server_info))
        .route("/metrics", get(metrics))
        .route("/stats", get(stats::stats))
        .route("/logging", get(logging::show).post(logging::change))
        .route("/config_dump", get(config_dump))
        .route("/clusters", get(clusters))
        .route(
            "/route_configs/{name}",
            put(put_resource::<RouteConfigSpec>),
        )
        .route(
            "/clusters/{name}",
            put(put_resource::<ClusterSpec>).delete(delete_cluster),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            (state.clone(), auth::TokenReads::default()),
            writes_need_the_token,
        ))
        .with_state(state.clone());
    let accepts = crate::http_server::Accepts {
        server: "admin",
        errors: state.metrics().root().counter(
            "admin_accept_errors",
            "Accepts of the admin API's connections that failed (out of file descriptors, say)",
        ),
    };
    crate::http_server::serve(
        listener,
        app,
        stop,
        crate::http_server::REQUEST_TIMEOUT,
        accepts,
    )
    .await;
}

/// Writes (every method but GET and HEAD) need the admin token when one is set. Checked before
/// anything else, a request's body included, is read.
async fn writes_need_the_token(
    State((state, token_reads)): State<(Arc<ProxyState>, auth::TokenReads)>,
    request: Request,
    next: Next,
) -> Response {
    if !matches!(*request.method(), Method::GET | Method::HEAD)
        && let Err(refused) =
            auth::authorize(&state.config(), &token_reads, request.headers()).await
    {
        return refused;
    }
    next.run(request).await
}

async fn help() -> String {
    let mut text = String::from("metaprotocol-proxy admin API\n\n");
    for (method, path, what) in ENDPOINTS {
        text.push_str(&format!("  {method:<6} {path:<22} {what}\n"));
    }
    text
}

/// 200 while serving; 503, saying why, before the config is applied, from the moment shutdown
/// begins, and while health checks are failed on request.
async fn ready(State(state): State<Arc<ProxyState>>) -> Response {
    match state.readiness() {
        Readiness::Live => (StatusCode::OK, "ready\n").into_response(),
        not => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", not.reason()),
        )
            .into_response(),
    }
}

async fn health_check_fail(State(state): State<Arc<ProxyState>>) -> Response {
    set_health_check(&state, true)
}

async fn health_check_ok(State(state): State<Arc<ProxyState>>) -> Response {
    set_health_check(&state, false)
}

fn set_health_check(state: &ProxyState, fail: bool) -> Response {
    state.fail_health_checks(fail);
    tracing::info!(
        failing = fail,
        "health checks switched through the admin API"
    );
    let answer = if fail {
        "failing health checks\n"
    } else {
        "passing health checks\n"
    };
    answer.into_response()
}

async fn server_info(State(state): State<Arc<ProxyState>>) -> Json<serde_json::Value> {
    let (started, uptime) = state.started();
    let build: serde_json::Map<String, serde_json::Value> = crate::stats::build_labels()
        .into_iter()
        .map(|(key, value)| (key.to_owned(), json!(value)))
        .collect();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "build": build,
        "state": state.readiness().name(),
        "start_time": crate::access_log::rfc3339(started),
        "uptime_seconds": uptime.as_secs(),
        "config_source": state.config_source(),
    }))
}

async fn metrics(State(state): State<Arc<ProxyState>>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = ExpositionFormat::from_accept(accept);
    let metrics = state.metrics().clone();
    match off_the_runtime(move || metrics.encode(format)).await {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(answer) => answer,
    }
}

/// Runs `work` (reading and writing out every series: tens of thousands of them take a good
/// part of a second) on a thread of its own, not on the runtime thread it would keep from the
/// accept loops, health checks and other admin requests meanwhile.
async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(work).await.map_err(|err| {
        tracing::error!(error = %err, "reading the series failed");
        error_answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "reading the series failed",
        )
    })
}

async fn config_dump(State(state): State<Arc<ProxyState>>) -> Json<serde_json::Value> {
    let versions: serde_json::Map<String, serde_json::Value> = state
        .route_versions()
        .into_iter()
        .map(|(name, version)| (name, json!(version)))
        .collect();
    Json(json!({
        "config": *state.config(),
        "route_config_versions": versions,
        "dynamic_resources": state.dynamic_statuses(),
        "dynamic_sources": state.source_statuses(),
        "config_file": state.config_file_status(),
    }))
}

async fn clusters(State(state): State<Arc<ProxyState>>) -> Json<serde_json::Value> {
    Json(json!({ "clusters": state.cluster_statuses() }))
}

/// A path the API does not have.
async fn not_found(uri: Uri) -> Response {
    error_answer(
        StatusCode::NOT_FOUND,
        &format!("no endpoint {}: GET /help lists them", uri.path()),
    )
}

/// A method the path does not take; the `Allow` header, which the router adds, names those it
/// does.
async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error_answer(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!(
            "{} does not take {method}: the Allow header names the methods it takes",
            uri.path()
        ),
    )
}

/// An error answer: status, message, and the offending field and its position when known.
fn error(status: StatusCode, err: &UpdateError) -> Response {
    match err {
        UpdateError::Invalid(err) => located_error(
            status,
            &err.reason,
            Some(err.field.as_str()).filter(|f| !f.is_empty()),
            err.position,
        ),
        other => error_answer(status, &other.to_string()),
    }
}

/// An error answer about no field in particular.
fn error_answer(status: StatusCode, message: &str) -> Response {
    located_error(status, message, None, None)
}

/// An error answer in the API's JSON: `{"error": ..., "field": ..., "line": ..., "column": ...}`.
fn located_error(
    status: StatusCode,
    message: &str,
    field: Option<&str>,
    position: Option<Position>,
) -> Response {
    let body = json!({
        "error": message,
        "field": field,
        "line": position.map(|p| p.line),
        "column": position.map(|p| p.column),
    });
    (status, Json(body)).into_response()
}

/// The answer to a rejected update: `400` for a mistake of the request, but `503` for an update
/// that failed for the proxy (a file it reads not read in time), which the same request may
/// apply once the file system answers, as for an update cut by its deadline.
fn update_error(err: &UpdateError) -> Response {
    let status = match err {
        UpdateError::NotFound { .. } => StatusCode::NOT_FOUND,
        UpdateError::InUse { .. } => StatusCode::CONFLICT,
        UpdateError::Invalid(err) if err.was_not_read() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    error(status, err)
}

/// A resource the API replaces by name.
trait Resource: Sized + Send + 'static {
    /// Parses a YAML or JSON body.
    fn parse(text: &str) -> Result<Self, ConfigError>;
    /// Its name (the body's must be the path's).
    fn name(&self) -> &str;
    /// Applies it; its new version.
    fn apply(self, state: &ProxyState) -> impl Future<Output = Result<u64, UpdateError>> + Send;
}

impl Resource for RouteConfigSpec {
    fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::from_yaml(text)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn apply(self, state: &ProxyState) -> impl Future<Output = Result<u64, UpdateError>> + Send {
        state.update_route_config(self)
    }
}

impl Resource for ClusterSpec {
    fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::from_yaml(text)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn apply(self, state: &ProxyState) -> impl Future<Output = Result<u64, UpdateError>> + Send {
        state.update_cluster(self)
    }
}

/// How long before its request's deadline an update that has not finished gives up, so that
/// its answer (not the server's bare `408`) tells the operator that nothing changed.
const UPDATE_ANSWER_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs `update` until shortly before `deadline`. An update given up is given up whole: it
/// waits (behind another update, on DNS, binding sockets) only before it publishes anything,
/// and publishes without waiting ([`ProxyState::apply`]); so the answer is `503`, saying that
/// nothing changed, and it counts as rejected.
async fn update_within<T>(
    state: &ProxyState,
    deadline: Option<Extension<RequestDeadline>>,
    update: impl Future<Output = Result<T, UpdateError>>,
) -> Result<T, Response> {
    let Some(Extension(RequestDeadline(deadline))) = deadline else {
        return update.await.map_err(|err| update_error(&err));
    };
    let give_up = deadline
        .checked_sub(UPDATE_ANSWER_MARGIN)
        .unwrap_or(deadline);
    // Told the deadline, the update's waits it can end itself (its files' reads) end by it,
    // with an error that names what it waited for.
    let update = crate::proxy::with_deadline(give_up, update);
    match tokio::time::timeout_at(give_up, update).await {
        Ok(result) => result.map_err(|err| update_error(&err)),
        Err(_) => {
            state.count_update(false);
            Err(error_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "not applied: the update did not finish in time (it waited behind another update or on DNS); nothing changed",
            ))
        }
    }
}

/// The answer to an update whose path's resource name is not text (`%FF`): a rejected update,
/// in the API's JSON.
fn unreadable_name(state: &ProxyState, rejection: &PathRejection) -> Response {
    state.count_update(false);
    error_answer(rejection.status(), &rejection.body_text())
}

/// `PUT` of a resource: 200 with its new version, or the error.
async fn put_resource<T: Resource>(
    State(state): State<Arc<ProxyState>>,
    path: Result<Path<String>, PathRejection>,
    deadline: Option<Extension<RequestDeadline>>,
    body: Result<String, StringRejection>,
) -> Response {
    let name = match path {
        Ok(Path(name)) => name,
        Err(rejection) => return unreadable_name(&state, &rejection),
    };
    // A body that is not text, or too large to take, is a rejected update like any other: in
    // the API's JSON, and counted.
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            state.count_update(false);
            return error_answer(rejection.status(), &rejection.body_text());
        }
    };
    let spec = match T::parse(&body) {
        Ok(spec) if spec.name() == name => spec,
        Ok(spec) => {
            state.count_update(false);
            let err = ConfigError::new(
                "name",
                format!("`{}` does not match the path's `{name}`", spec.name()),
            );
            return update_error(&err.into());
        }
        Err(err) => {
            state.count_update(false);
            return update_error(&err.into());
        }
    };
    let applied = async {
        spec.apply(&state).await.map_err(|err| match err {
            // An error about the resource names its field (one about another resource, which
            // the change broke, names that one's list): placed in the body it came from.
            UpdateError::Invalid(err) if !names_a_list(&err.field) => err.located_in(&body).into(),
            err => err,
        })
    };
    match update_within(&state, deadline, applied).await {
        Ok(version) => Json(json!({ "name": name, "version": version })).into_response(),
        Err(answer) => answer,
    }
}

/// True if `field` is a path in a whole config's lists (`route_configs[0]...`), not in one
/// resource.
fn names_a_list(field: &str) -> bool {
    ["listeners", "route_configs", "clusters"]
        .iter()
        .any(|list| {
            field
                .strip_prefix(list)
                .is_some_and(|rest| rest.starts_with('['))
        })
}

async fn delete_cluster(
    State(state): State<Arc<ProxyState>>,
    path: Result<Path<String>, PathRejection>,
    deadline: Option<Extension<RequestDeadline>>,
) -> Response {
    let name = match path {
        Ok(Path(name)) => name,
        Err(rejection) => return unreadable_name(&state, &rejection),
    };
    match update_within(&state, deadline, state.remove_cluster(&name)).await {
        Ok(()) => Json(json!({ "name": name, "removed": true })).into_response(),
        Err(answer) => answer,
    }
}

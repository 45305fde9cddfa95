//! The admin HTTP API: readiness, metrics, the running config, cluster state, and updates of
//! route configs and clusters (see docs/config.md for the contract). Answers are JSON, errors
//! included (`{"error": ..., "field": ..., "line": ..., "column": ...}`). Write endpoints ask
//! for the bearer token of `admin.token_file` when one is configured ([`auth`]); the server
//! itself bounds slow and idle clients ([`server`]).

mod auth;
mod server;

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{ClusterSpec, ConfigError, RouteConfigSpec};
use crate::proxy::{ProxyState, UpdateError};

/// Serves the admin API on `listener` until `stop`.
pub(crate) async fn serve(listener: TcpListener, state: Arc<ProxyState>, stop: CancellationToken) {
    auth::warn_if_exposed(&state.config());
    let app = Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
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
        .with_state(state);
    server::serve(listener, app, stop).await;
}

/// 200 while serving; 503 before the config is loaded and from the moment shutdown begins.
async fn ready(State(state): State<Arc<ProxyState>>) -> Response {
    if state.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<ProxyState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics().render(),
    )
        .into_response()
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
    }))
}

async fn clusters(State(state): State<Arc<ProxyState>>) -> Json<serde_json::Value> {
    Json(json!({ "clusters": state.cluster_statuses() }))
}

/// An error answer: status, message, and the offending field and its position when known.
fn error(status: StatusCode, err: &UpdateError) -> Response {
    let (message, field, position) = match err {
        UpdateError::Invalid(err) => (
            err.reason.clone(),
            Some(err.field.as_str()).filter(|f| !f.is_empty()),
            err.position,
        ),
        other => (other.to_string(), None, None),
    };
    let body = json!({
        "error": message,
        "field": field,
        "line": position.map(|p| p.line),
        "column": position.map(|p| p.column),
    });
    (status, Json(body)).into_response()
}

fn update_error(err: &UpdateError) -> Response {
    let status = match err {
        UpdateError::NotFound { .. } => StatusCode::NOT_FOUND,
        UpdateError::InUse { .. } => StatusCode::CONFLICT,
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

/// `PUT` of a resource: 200 with its new version, or the error.
async fn put_resource<T: Resource>(
    State(state): State<Arc<ProxyState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Err(refused) = auth::authorize(&state.config(), &headers).await {
        return refused;
    }
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
    match spec.apply(&state).await {
        Ok(version) => Json(json!({ "name": name, "version": version })).into_response(),
        Err(err) => update_error(&err),
    }
}

async fn delete_cluster(
    State(state): State<Arc<ProxyState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = auth::authorize(&state.config(), &headers).await {
        return refused;
    }
    match state.remove_cluster(&name).await {
        Ok(()) => Json(json!({ "name": name, "removed": true })).into_response(),
        Err(err) => update_error(&err),
    }
}

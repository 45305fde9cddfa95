//! The admin HTTP API: readiness, metrics, the running config, cluster state, and route config
//! updates (see the project's CONFIG.md for the contract).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::RouteConfigSpec;
use crate::proxy::ProxyState;

/// Serves the admin API on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<ProxyState>,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/config_dump", get(config_dump))
        .route("/clusters", get(clusters))
        .route("/route_configs/{name}", put(put_route_config))
        .with_state(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(err) = served {
        tracing::warn!(error = %err, "admin server stopped");
    }
}

/// Listeners are bound and the config loaded before the admin API starts, so serving means ready.
async fn ready() -> &'static str {
    "ready\n"
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
        "config": state.config(),
        "route_config_versions": versions,
    }))
}

async fn clusters(State(state): State<Arc<ProxyState>>) -> Json<serde_json::Value> {
    let mut names: Vec<_> = state.clusters().keys().cloned().collect();
    names.sort();
    let clusters: Vec<serde_json::Value> = names
        .iter()
        .filter_map(|name| state.clusters().get(name))
        .map(|cluster| {
            let endpoints: Vec<serde_json::Value> = cluster
                .endpoints()
                .endpoints()
                .iter()
                .map(|e| {
                    json!({
                        "address": e.address().to_string(),
                        "weight": e.weight(),
                        "labels": e.labels(),
                        "health": "healthy",
                        "ejected": false,
                        "active_requests": e.active_requests(),
                        "total_requests": e.total_requests(),
                        "open_connections": e.pool().open_connections(),
                    })
                })
                .collect();
            json!({ "name": &**cluster.name(), "endpoints": endpoints })
        })
        .collect();
    Json(json!({ "clusters": clusters }))
}

async fn put_route_config(
    State(state): State<Arc<ProxyState>>,
    Path(name): Path<String>,
    body: String,
) -> Response {
    let spec = match RouteConfigSpec::from_yaml(&body) {
        Ok(spec) => spec,
        Err(err) => return (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response(),
    };
    if spec.name != name {
        return (
            StatusCode::BAD_REQUEST,
            format!("name: `{}` does not match the path's `{name}`\n", spec.name),
        )
            .into_response();
    }
    match state.update_route_config(spec) {
        Ok(version) => Json(json!({ "name": name, "version": version })).into_response(),
        Err(err) => (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response(),
    }
}

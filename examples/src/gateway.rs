//! An HTTP-to-Dubbo gateway on the engine's [`RouterClient`]: `POST /dubbo/{service}/{method}`
//! with a JSON body `{"args": ["..."], "attachments": {"k": "v"}, "version": "1.0.0"}` becomes a
//! Dubbo call (built with [`metaprotocol_dubbo::build`]) routed, balanced, timed and retried by
//! the client's config; the answer comes back as JSON:
//!
//! | outcome | HTTP | body |
//! |---|---|---|
//! | the service answered | 200 | `{"status": 20, "result": "...", "attachments": {...}}` |
//! | the service answered with an error status | 502 | `{"status": 80, "error": "...", "attachments": {...}}` |
//! | the engine answered (no route, timeout, refused by a filter ...) | 404, 504, 403 ... | `{"error": "...", "kind": "timeout"}` |
//! | the request is not a call | 400 (not JSON), 413 (over 2 MB), 415 (no `Content-Type: application/json`), 422 (not a call's fields) | `{"error": "..."}` |
//!
//! The client sits under a tower [`Timeout`] layer (the gateway's own bound on every call,
//! whatever the routes say): the engine is an ordinary tower service.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use metaprotocol_core::{LocalReplyKind, Message};
use metaprotocol_dubbo::build::{Call, ResponseBody, request_message, response_body};
use metaprotocol_router::{CallError, RouterClient};
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt;
use tower::timeout::Timeout;

/// The service version calls name unless the body gives one.
pub const DEFAULT_VERSION: &str = "1.0.0";

/// A call as the HTTP body gives it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallBody {
    /// The method's arguments (all `java.lang.String`).
    #[serde(default)]
    pub args: Vec<String>,
    /// Attachments sent with the call.
    #[serde(default)]
    pub attachments: BTreeMap<String, String>,
    /// The service version (default [`DEFAULT_VERSION`]).
    pub version: Option<String>,
}

/// The gateway's backend: the engine behind a tower timeout.
type Backend = Timeout<RouterClient>;

/// How much longer than its bound on calls the gateway gives a request before the HTTP server
/// answers it `408`: a call that takes too long gets the gateway's own `504`.
const SERVER_MARGIN: Duration = Duration::from_secs(5);

/// Serves the gateway's routes over `client` on `listener` until `stop` resolves, each call
/// bounded by `timeout`, with the bounds of [`metaprotocol_router::serve_http`] on what clients
/// hold (its bound on a whole request made longer than `timeout`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    client: RouterClient,
    timeout: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let request_timeout = timeout.saturating_add(SERVER_MARGIN);
    metaprotocol_router::serve_http_within(listener, app(client, timeout), stop, request_timeout)
        .await;
}

/// The gateway's routes over `client`, each call bounded by `timeout`.
pub fn app(client: RouterClient, timeout: Duration) -> Router {
    Router::new()
        .route("/dubbo/{service}/{method}", post(call))
        .with_state(Timeout::new(client, timeout))
}

type Answer = (StatusCode, Json<Value>);

async fn call(
    State(backend): State<Backend>,
    Path((service, method)): Path<(String, String)>,
    body: Result<Json<CallBody>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    let Json(body) = match body {
        Ok(body) => body,
        Err(rejection) => return error(rejection.status(), rejection.body_text(), None),
    };
    let args: Vec<&str> = body.args.iter().map(String::as_str).collect();
    let attachments: Vec<(&str, &str)> = body
        .attachments
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let call = Call {
        service: &service,
        version: body.version.as_deref().unwrap_or(DEFAULT_VERSION),
        method: &method,
        string_args: &args,
        attachments: &attachments,
    };
    let request = match request_message(&call) {
        Ok(request) => request,
        Err(err) => return error(StatusCode::BAD_REQUEST, err.to_string(), None),
    };
    match backend.oneshot(request).await {
        Ok(response) => answer(&response),
        Err(err) => match err.downcast::<CallError>() {
            Ok(err) => error(
                http_status(err.kind()),
                err.message().to_owned(),
                Some(err.kind()),
            ),
            Err(other) if other.is::<tower::timeout::error::Elapsed>() => error(
                StatusCode::GATEWAY_TIMEOUT,
                "the gateway's timeout passed".to_owned(),
                Some(LocalReplyKind::Timeout),
            ),
            Err(other) => error(StatusCode::INTERNAL_SERVER_ERROR, other.to_string(), None),
        },
    }
}

/// The service's answer as JSON.
fn answer(response: &Message) -> Answer {
    let attachments: BTreeMap<&str, &str> = response.metadata.iter().collect();
    let status = response.frame.get(3).copied().unwrap_or_default();
    let (code, mut body) = match response_body(&response.frame) {
        Ok(ResponseBody::Value(result)) => (StatusCode::OK, json!({ "result": result })),
        Ok(ResponseBody::Null) => (StatusCode::OK, json!({ "result": null })),
        Ok(ResponseBody::Exception) => (
            StatusCode::BAD_GATEWAY,
            json!({ "error": "the service threw an exception" }),
        ),
        Ok(ResponseBody::Error { message, .. }) => {
            (StatusCode::BAD_GATEWAY, json!({ "error": message }))
        }
        Ok(other) => (
            StatusCode::BAD_GATEWAY,
            json!({ "error": format!("an answer the gateway cannot show: {other:?}") }),
        ),
        Err(err) => (StatusCode::BAD_GATEWAY, json!({ "error": err.to_string() })),
    };
    body["status"] = json!(status);
    body["attachments"] = json!(attachments);
    (code, Json(body))
}

fn error(code: StatusCode, message: String, kind: Option<LocalReplyKind>) -> Answer {
    let mut body = json!({ "error": message });
    if let Some(kind) = kind {
        body["kind"] = json!(kind.name());
    }
    (code, Json(body))
}

/// The HTTP status closest to the engine's answer.
pub fn http_status(kind: LocalReplyKind) -> StatusCode {
    match kind {
        LocalReplyKind::RouteNotFound => StatusCode::NOT_FOUND,
        LocalReplyKind::Unauthorized => StatusCode::FORBIDDEN,
        LocalReplyKind::OverLimit => StatusCode::TOO_MANY_REQUESTS,
        LocalReplyKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        LocalReplyKind::BadRequest => StatusCode::BAD_REQUEST,
        LocalReplyKind::NoHealthyUpstream | LocalReplyKind::Unavailable => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        LocalReplyKind::UpstreamReset | LocalReplyKind::UpstreamConnectFailure => {
            StatusCode::BAD_GATEWAY
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

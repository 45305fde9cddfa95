//! `/logging`: the log levels of the running process, seen and changed at run time through a
//! [`LogControl`] the embedder hands the proxy (the engine logs through `tracing` but does not
//! install the subscriber; whoever does holds its reload handle).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error_answer;
use crate::proxy::ProxyState;

/// Reads and changes the process' log filter, for `/logging`.
///
/// The `metaprotocol-proxy` binary implements it over `tracing-subscriber`'s reload handle; an
/// embedder passes its own to [`ProxyBuilder::log_control`](crate::ProxyBuilder::log_control).
pub trait LogControl: Send + Sync + 'static {
    /// The filter in force, as directives (`warn,metaprotocol_router=info`).
    fn current(&self) -> String;

    /// Replaces the filter with `directives` (a level, or `RUST_LOG`-style directives); the
    /// reason when they are not valid (the filter in force stays).
    fn set(&self, directives: &str) -> Result<(), String>;
}

/// `?level=` (a level for everything) or `?filter=` (directives).
#[derive(Debug, Deserialize)]
pub(super) struct Change {
    level: Option<String>,
    filter: Option<String>,
}

/// The levels `?level=` takes as a word. A word that is none of them would go to the
/// [`LogControl`] as a directive naming a target: `?level=wran` would log only a target named
/// `wran`, hiding every warning and error of the proxy with a `200`. Directives (`=` or `,`
/// in them: `metaprotocol_router=debug`) are taken, as they always were.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// True if `value` reads as directives rather than one word.
fn is_directives(value: &str) -> bool {
    value.contains(['=', ','])
}

/// The answer when the embedder passed no [`LogControl`].
fn no_control() -> Response {
    error_answer(
        StatusCode::NOT_IMPLEMENTED,
        "log levels cannot be changed: the program embedding the proxy passed no LogControl",
    )
}

/// `GET /logging`: the filter in force.
pub(super) async fn show(State(state): State<Arc<ProxyState>>) -> Response {
    match state.log_control() {
        Some(control) => format!("{}\n", control.current()).into_response(),
        None => no_control(),
    }
}

/// `POST /logging?level=debug` or `?filter=warn,metaprotocol_router=debug`: changes the filter.
pub(super) async fn change(
    State(state): State<Arc<ProxyState>>,
    change: Result<Query<Change>, QueryRejection>,
) -> Response {
    let Some(control) = state.log_control() else {
        return no_control();
    };
    let Query(change) = match change {
        Ok(change) => change,
        Err(rejection) => return error_answer(rejection.status(), &rejection.body_text()),
    };
    let directives = match (change.level, change.filter) {
        (Some(level), None) if is_directives(&level) => level,
        (Some(level), None) => match LEVELS.iter().find(|l| l.eq_ignore_ascii_case(&level)) {
            Some(level) => (*level).to_owned(),
            None => {
                return error_answer(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "?level= is one of {}, or directives (target=level, ...)",
                        LEVELS.join(", ")
                    ),
                );
            }
        },
        (None, Some(filter)) => filter,
        _ => {
            return error_answer(
                StatusCode::BAD_REQUEST,
                "give one of ?level=<level> or ?filter=<directives>",
            );
        }
    };
    match control.set(&directives) {
        Ok(()) => {
            tracing::info!(filter = %directives, "log filter changed through the admin API");
            format!("{}\n", control.current()).into_response()
        }
        Err(reason) => error_answer(StatusCode::BAD_REQUEST, &reason),
    }
}

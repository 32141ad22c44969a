//! The HTTP/JSON API on a unix socket (mode 0600), with axum.
//!
//! Handlers hand the work to a blocking thread holding the agent's lock:
//! map updates are syscalls, and one change at a time keeps the order of
//! store, engine and kernel writes simple to reason about.

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::{DefaultBodyLimit, FromRef, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentError};
use crate::observer::Observer;
use bulkhead_api::{ApplyRequest, AuditRequest, EndpointRequest, ErrorBody, FlowsRequest};

/// The agent behind its lock.
pub type Shared = Arc<Mutex<Agent>>;

/// What handlers reach: the agent, and the observer (read without the
/// agent's lock, so `observe` never waits behind a policy change).
#[derive(Clone)]
pub struct AppState {
    /// The agent.
    pub agent: Shared,
    /// Its flows.
    pub observer: Arc<Observer>,
}

impl FromRef<AppState> for Shared {
    fn from_ref(s: &AppState) -> Self {
        Arc::clone(&s.agent)
    }
}

impl FromRef<AppState> for Arc<Observer> {
    fn from_ref(s: &AppState) -> Self {
        Arc::clone(&s.observer)
    }
}

/// A 400 answer.
pub fn bad_request(error: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(ErrorBody { error, details: Vec::new() })).into_response()
}

/// Runs `f` on the agent, off the async threads, and answers with JSON.
async fn call<T, F>(agent: Shared, f: F) -> Response
where
    T: Serialize + Send + 'static,
    F: FnOnce(&mut Agent) -> Result<T, AgentError> + Send + 'static,
{
    let done = tokio::task::spawn_blocking(move || {
        // A panicking request leaves the agent as the last completed step
        // left it; the next request proceeds.
        let mut a = agent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut a)
    })
    .await;
    match done {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, Json(ErrorBody { error: e.to_string(), details: e.details() })).into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(ErrorBody { error: format!("the request failed inside the agent: {e}"), details: Vec::new() }),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct PolicyQuery {
    endpoint: String,
}

#[derive(Deserialize)]
struct ReachQuery {
    #[serde(default)]
    ports: String,
}

async fn flows(State(o): State<Arc<Observer>>, Json(r): Json<FlowsRequest>) -> Response {
    match o.follow(&r).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => bad_request(format!("filter: {e}")),
    }
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/status", get(|State(a): State<Shared>| call(a, |a| a.status())))
        .route("/v1/apply", post(|State(a): State<Shared>, Json(r): Json<ApplyRequest>| call(a, |a| a.apply(r))))
        .route("/v1/delete", post(|State(a): State<Shared>, Json(r): Json<ApplyRequest>| call(a, |a| a.delete(r))))
        .route("/v1/endpoints", get(|State(a): State<Shared>| call(a, |a| a.endpoints())))
        .route(
            "/v1/endpoints/{id}",
            put(|State(a): State<Shared>, UrlPath(id): UrlPath<String>, Json(r): Json<EndpointRequest>| {
                call(a, move |a| {
                    if r.container_id != id {
                        return Err(AgentError::Invalid {
                            message: format!("the path names container {id}, the body {}", r.container_id),
                            details: Vec::new(),
                        });
                    }
                    a.add_endpoint(r)
                })
            })
            .get(|State(a): State<Shared>, UrlPath(id): UrlPath<String>| call(a, move |a| a.endpoint(&id)))
            .delete(|State(a): State<Shared>, UrlPath(id): UrlPath<String>| call(a, move |a| a.remove_endpoint(&id))),
        )
        .route("/v1/identities", get(|State(a): State<Shared>| call(a, |a| Ok(a.identities()))))
        .route(
            "/v1/policy",
            get(|State(a): State<Shared>, Query(q): Query<PolicyQuery>| call(a, move |a| a.policy_dump(&q.endpoint))),
        )
        .route(
            "/v1/reach",
            get(|State(a): State<Shared>, Query(q): Query<ReachQuery>| {
                call(a, move |a| {
                    let ports: Vec<String> =
                        q.ports.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
                    a.reach(&ports)
                })
            }),
        )
        .route("/v1/flows", post(flows))
        .route("/v1/flows/key", get(|State(a): State<Shared>| call(a, |a| a.flow_key())))
        .route("/v1/audit", put(|State(a): State<Shared>, Json(r): Json<AuditRequest>| call(a, |a| a.set_audit(r))))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(ErrorBody { error: "no such API route (this agent serves /v1/…)".into(), details: Vec::new() }),
            )
        })
        .layer(DefaultBodyLimit::max(256 << 20))
        .with_state(state)
}

/// Binds the socket: refuses when another agent answers on it, replaces a
/// stale one, and leaves it readable and writable by root only.
pub async fn bind(socket: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if socket.exists() {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{}: another agent is serving on this socket (bulkhead status)", socket.display()),
            ));
        }
        std::fs::remove_file(socket)?;
    }
    // connect(2) needs write permission, which the default umask already
    // withholds from others; 0600 then also closes it to the group.
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

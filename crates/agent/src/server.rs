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
use bulkhead_api::{ApplyRequest, AuditRequest, EndpointRequest, ErrorBody, FlowsRequest, UiAddress};

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
    /// The service map's access (none without `--web-listen`).
    pub web: Option<Arc<crate::web::WebAccess>>,
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

/// `bulkhead ui`: the service map's address with its token, which only
/// this socket hands out.
fn ui(s: &AppState) -> Response {
    match &s.web {
        Some(access) => Json(UiAddress { url: access.url() }).into_response(),
        None => (
            StatusCode::CONFLICT,
            Json(ErrorBody {
                error: "this agent serves no service map (it was started with --no-web)".into(),
                details: Vec::new(),
            }),
        )
            .into_response(),
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
        .route("/v1/ui", get(|State(s): State<AppState>| async move { ui(&s) }))
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
///
/// The socket is bound inside a fresh directory only its owner can enter
/// (mode 0700), made mode 0600 there, and only then renamed into place: at
/// no moment can anyone else connect to it, whatever the umask, and a
/// `--socket` in a shared directory (such as /tmp) is as safe as the
/// default one.
pub async fn bind(socket: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let name = socket.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{}: not a file path", socket.display()))
    })?;
    let dir = socket.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    if socket.exists() {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{}: another agent is serving on this socket (bulkhead status)", socket.display()),
            ));
        }
        std::fs::remove_file(socket)?;
    }
    let private = nix::unistd::mkdtemp(&dir.join(".bulkhead-bind-XXXXXX"))?;
    let bound = private.join(name);
    let result = (|| {
        let listener = tokio::net::UnixListener::bind(&bound)?;
        std::fs::set_permissions(&bound, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&bound, socket)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&bound);
    let _ = std::fs::remove_dir(&private);
    result
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[tokio::test]
    async fn the_socket_is_0600_in_place_and_leaves_no_private_directory() {
        let dir = std::env::temp_dir().join(format!("bulkhead-bind-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let socket = dir.join("agent.sock");
        let listener = super::bind(&socket).await.expect("bind");
        let meta = std::fs::symlink_metadata(&socket).expect("socket");
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(tokio::net::UnixStream::connect(&socket).await.is_ok(), "the renamed socket serves");
        let left: Vec<_> = std::fs::read_dir(&dir).expect("dir").flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("agent.sock")]);
        // A second agent on the same socket is refused; a stale one replaced.
        assert!(super::bind(&socket).await.is_err());
        drop(listener);
        assert!(super::bind(&socket).await.is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

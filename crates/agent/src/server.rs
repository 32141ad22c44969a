//! The HTTP/JSON API on a unix socket (mode 0600), with axum.
//!
//! Reads (status, endpoints, identities, `policy get`, flows) are answered
//! from the newest published snapshot and the kernel's read handles, on a
//! blocking thread: they never wait for a change in progress. Changes go to
//! the one writer's queue (`reconciler`) and the handler waits for its
//! answer; `apply` decodes and validates its files before queueing them, so
//! the writer spends its time only on what changes.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bulkhead_api::{ApplyRequest, AuditRequest, EndpointRequest, ErrorBody, FlowsRequest, UiAddress};
use bulkhead_datapath::DatapathView;
use serde::{Deserialize, Serialize};

use crate::config::AgentError;
use crate::inspect::{AgentInfo, Readers};
use crate::observer::Observer;
use crate::reconciler::{Command, Objects, Reply};
use crate::snapshot::Published;

/// What handlers reach.
#[derive(Clone)]
pub struct AppState {
    /// The writer's queue.
    pub commands: Sender<Command>,
    /// The newest snapshot.
    pub published: Arc<Published>,
    /// What does not change.
    pub info: Arc<AgentInfo>,
    /// The kernel's maps, for reading.
    pub kernel: Arc<DatapathView>,
    /// Flows.
    pub observer: Arc<Observer>,
    /// The service map's access (none without `--web-listen`).
    pub web: Option<Arc<crate::web::WebAccess>>,
}

impl AppState {
    /// Runs a read on a blocking thread with the newest snapshot.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(Readers<'_>) -> Result<T, AgentError> + Send + 'static,
    ) -> Result<T, AgentError> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || {
            let snapshot = s.published.load();
            f(Readers { snapshot: &snapshot, info: &s.info, kernel: &s.kernel, observer: &s.observer })
        })
        .await
        .map_err(|e| AgentError::Stopped(format!("the request failed inside the agent: {e}")))?
    }

    /// Queues a change for the writer and waits for its answer.
    pub async fn change<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, AgentError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands.send(command(tx)).map_err(|_| AgentError::Stopped("its writer has stopped".into()))?;
        rx.await.map_err(|_| AgentError::Stopped("its writer dropped the request".into()))?
    }
}

/// A 400 answer.
pub fn bad_request(error: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(ErrorBody { error, details: Vec::new() })).into_response()
}

/// JSON for a value, or the error with its status and diagnostics.
fn answer<T: Serialize>(r: Result<T, AgentError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, Json(ErrorBody { error: e.to_string(), details: e.details() })).into_response()
        }
    }
}

#[derive(Deserialize)]
struct PolicyQuery {
    endpoint: String,
}

#[derive(Deserialize)]
struct FqdnQuery {
    #[serde(default)]
    endpoint: Option<String>,
}

#[derive(Deserialize)]
struct ReachQuery {
    #[serde(default)]
    ports: String,
}

async fn flows(State(s): State<AppState>, Json(r): Json<FlowsRequest>) -> Response {
    match s.observer.follow(&r).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => bad_request(format!("filter: {e}")),
    }
}

/// `apply -f` and `delete -f`: decoded here, changed by the writer.
async fn objects(s: AppState, req: ApplyRequest, delete: bool) -> Response {
    let received = Instant::now();
    let decoded = tokio::task::spawn_blocking(move || Objects::decode(&req, received))
        .await
        .map_err(|e| AgentError::Stopped(format!("decoding failed inside the agent: {e}")))
        .and_then(|r| r);
    let objects = match decoded {
        Ok(o) => o,
        Err(e) => return answer::<()>(Err(e)),
    };
    answer(
        s.change(|reply| if delete { Command::Delete(objects, reply) } else { Command::Apply(objects, reply) }).await,
    )
}

async fn put_endpoint(
    State(s): State<AppState>,
    UrlPath(id): UrlPath<String>,
    Json(r): Json<EndpointRequest>,
) -> Response {
    if r.container_id != id {
        return answer::<()>(Err(AgentError::invalid(format!(
            "the path names container {id}, the body {}",
            r.container_id
        ))));
    }
    answer(s.change(|reply| Command::AddEndpoint(r, reply)).await)
}

/// `bulkhead ui`: the service map's address with its token, which only
/// this socket hands out.
fn ui(s: &AppState) -> Response {
    match &s.web {
        Some(access) => Json(UiAddress { url: access.url() }).into_response(),
        None => answer::<()>(Err(AgentError::Conflict(
            "this agent serves no service map (it was started with --no-web)".into(),
        ))),
    }
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/status", get(|State(s): State<AppState>| async move { answer(s.read(|r| r.status()).await) }))
        .route("/v1/apply", post(|State(s): State<AppState>, Json(r): Json<ApplyRequest>| objects(s, r, false)))
        .route("/v1/delete", post(|State(s): State<AppState>, Json(r): Json<ApplyRequest>| objects(s, r, true)))
        .route(
            "/v1/endpoints",
            get(|State(s): State<AppState>| async move {
                answer(Ok::<_, AgentError>(s.published.load().endpoints.clone()))
            }),
        )
        .route(
            "/v1/endpoints/{id}",
            put(put_endpoint)
                .get(|State(s): State<AppState>, UrlPath(id): UrlPath<String>| async move {
                    answer(s.published.load().endpoint(&id).cloned())
                })
                .delete(|State(s): State<AppState>, UrlPath(id): UrlPath<String>| async move {
                    answer(s.change(|reply| Command::RemoveEndpoint(id, reply)).await)
                }),
        )
        .route(
            "/v1/identities",
            get(|State(s): State<AppState>| async move {
                answer(Ok::<_, AgentError>(s.published.load().identities.clone()))
            }),
        )
        .route(
            "/v1/policy",
            get(|State(s): State<AppState>, Query(q): Query<PolicyQuery>| async move {
                answer(s.read(move |r| r.policy_dump(&q.endpoint)).await)
            }),
        )
        .route(
            "/v1/reach",
            get(|State(s): State<AppState>, Query(q): Query<ReachQuery>| async move {
                let ports: Vec<String> =
                    q.ports.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect();
                answer(s.change(|reply| Command::Reach(ports, reply)).await)
            }),
        )
        .route(
            "/v1/fqdn/cache",
            get(|State(s): State<AppState>, Query(q): Query<FqdnQuery>| async move {
                let snapshot = s.published.load();
                let rows: Vec<bulkhead_api::FqdnCacheEntry> = snapshot
                    .fqdn
                    .iter()
                    .filter(|r| q.endpoint.as_ref().is_none_or(|ep| r.endpoints.contains(ep)))
                    .cloned()
                    .collect();
                answer(Ok::<_, AgentError>(rows))
            }),
        )
        .route("/v1/flows", post(flows))
        .route("/v1/flows/key", get(|State(s): State<AppState>| async move { answer(s.read(|r| r.flow_key()).await) }))
        .route("/v1/ui", get(|State(s): State<AppState>| async move { ui(&s) }))
        .route(
            "/v1/audit",
            put(|State(s): State<AppState>, Json(r): Json<AuditRequest>| async move {
                answer(s.change(|reply| Command::SetAudit(r, reply)).await)
            }),
        )
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

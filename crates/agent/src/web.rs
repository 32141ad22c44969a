//! What the agent serves over HTTP on a TCP address (localhost by
//! default): Prometheus metrics at `/metrics`, and the service map, a page
//! at `/` that polls `/api/map` and `/api/edge`.
//!
//! Separate from the API socket: Prometheus and browsers speak TCP, and
//! nothing here changes state, so it needs none of the socket's 0600.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use bulkhead_flow::model::Flow;
use serde::Deserialize;

use crate::observer::Observer;
use crate::observer::map::{build, decides, node_of};
use crate::server::{AppState, Shared};

/// Flows the service map is built from (the newest in the ring).
const MAP_FLOWS: usize = 50_000;

const PAGE: &str = include_str!("web/map.html");

async fn metrics(State(a): State<Shared>, State(o): State<Arc<Observer>>) -> Response {
    let snapshot = tokio::task::spawn_blocking(move || {
        a.lock().unwrap_or_else(std::sync::PoisonError::into_inner).metrics_snapshot()
    })
    .await;
    match snapshot {
        Ok(Ok(s)) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], o.metrics().encode(s)).into_response(),
        Ok(Err(e)) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("reading the datapath's counters: {e}\n")).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn map(State(o): State<Arc<Observer>>) -> Response {
    Json(build(&o.recent(MAP_FLOWS))).into_response()
}

#[derive(Deserialize)]
struct EdgeQuery {
    from: String,
    to: String,
    #[serde(default = "default_last")]
    last: usize,
}

fn default_last() -> usize {
    50
}

/// The newest decisions on one edge, newest first.
async fn edge(State(o): State<Arc<Observer>>, Query(q): Query<EdgeQuery>) -> Response {
    let flows: Vec<Arc<Flow>> = o
        .recent(MAP_FLOWS)
        .into_iter()
        .rev()
        .filter(|f| decides(f) && node_of(&f.source).id == q.from && node_of(&f.destination).id == q.to)
        .take(q.last.min(1000))
        .collect();
    Json(flows).into_response()
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/metrics", get(metrics))
        .route("/api/map", get(map))
        .route("/api/edge", get(edge))
        .with_state(state)
}

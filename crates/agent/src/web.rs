//! What the agent serves over HTTP on a TCP address (localhost by
//! default): Prometheus metrics at `/metrics`, and the service map, a page
//! at `/` that polls `/api/map` and `/api/edge`.
//!
//! Separate from the API socket because Prometheus and browsers speak TCP.
//! Metrics are counts and may be read by whoever reaches the address. The
//! service map's data are flows, which are as sensitive as the API socket
//! (mode 0600) they otherwise come from, so reading them takes what only
//! the socket hands out ([`WebAccess`]): a token made at each start, which
//! `bulkhead ui` asks the agent for. The page (static, no data) takes the
//! token from its address, keeps it in memory and sends it as a bearer
//! header; no cookie carries it (cookies are not scoped to a port: every
//! other web server on the same host would receive it). Every request
//! must also name the server by an IP address or `localhost`: a web page
//! that rebinds a DNS name of its own to 127.0.0.1 (DNS rebinding) is
//! refused before the token is even looked at.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use bulkhead_flow::model::Flow;
use serde::Deserialize;

use crate::observer::map::{build, decides, node_of};
use crate::server::AppState;

/// Who may read the service map: see the module documentation.
#[derive(Debug)]
pub struct WebAccess {
    token: String,
    addr: SocketAddr,
}

impl WebAccess {
    /// A fresh token (128 random bits) for the server at `addr`.
    pub fn new(addr: SocketAddr) -> std::io::Result<Self> {
        use std::io::Read as _;
        let mut b = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        Ok(Self { token: b.iter().map(|x| format!("{x:02x}")).collect(), addr })
    }

    /// The service map's address with the token, for `bulkhead ui`. A
    /// wildcard listen address is given as the loopback one.
    pub fn url(&self) -> String {
        let ip = match self.addr.ip() {
            std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        };
        format!("http://{}/?token={}", SocketAddr::new(ip, self.addr.port()), self.token)
    }

    fn token_matches(&self, offered: &str) -> bool {
        // Constant time: the comparison does not tell how much matched.
        offered.len() == self.token.len()
            && offered.bytes().zip(self.token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// The token a request offers: a bearer header, or `?token=`.
    fn offered(req: &Request) -> Option<&str> {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let query = req.uri().query().into_iter().flat_map(|q| q.split('&')).find_map(|kv| kv.strip_prefix("token="));
        bearer.or(query)
    }
}

/// Whether the Host header names the server by an IP address or as
/// `localhost` (with or without the port): never by a DNS name someone
/// else controls.
fn host_is_literal(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(ip, _)| ip),
        None => host.rsplit_once(':').filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit())).map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

fn forbidden(why: &str) -> Response {
    (StatusCode::FORBIDDEN, format!("{why}: run `bulkhead ui` on the node for the service map's address\n"))
        .into_response()
}

/// The Host check for every service map route (see the module documentation).
async fn literal_host(req: Request, next: Next) -> Response {
    if !host_is_literal(req.headers()) {
        return forbidden("the Host header must be an IP address or localhost");
    }
    next.run(req).await
}

/// The token check for the service map's data.
async fn guard(State(access): State<Arc<WebAccess>>, req: Request, next: Next) -> Response {
    match WebAccess::offered(&req) {
        Some(t) if access.token_matches(t) => next.run(req).await,
        Some(_) => forbidden("wrong token (it changes at every agent start)"),
        None => forbidden("the service map's data need the agent's token"),
    }
}

/// Flows the service map is built from (the newest in the ring).
const MAP_FLOWS: usize = 50_000;

const PAGE: &str = include_str!("web/map.html");

async fn metrics(State(s): State<AppState>) -> Response {
    match s.read(|r| r.metrics_snapshot()).await {
        Ok(snap) => {
            ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], s.observer.metrics().encode(snap)).into_response()
        }
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("reading the datapath's counters: {e}\n")).into_response()
        }
    }
}

async fn map(State(s): State<AppState>) -> Response {
    // Building the map from 50,000 flows is work: not on an async worker.
    match tokio::task::spawn_blocking(move || build(&s.observer.recent(MAP_FLOWS))).await {
        Ok(m) => Json(m).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
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
async fn edge(State(s): State<AppState>, Query(q): Query<EdgeQuery>) -> Response {
    let found = tokio::task::spawn_blocking(move || -> Vec<Arc<Flow>> {
        s.observer
            .recent(MAP_FLOWS)
            .into_iter()
            .rev()
            .filter(|f| decides(f) && node_of(&f.source).id == q.from && node_of(&f.destination).id == q.to)
            .take(q.last.min(1000))
            .collect()
    })
    .await;
    match found {
        Ok(flows) => Json(flows).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The routes: metrics open; the service map's page (static) behind the
/// Host check, its data behind the Host check and [`guard`].
pub fn router(state: AppState, access: Arc<WebAccess>) -> Router {
    let data = Router::new()
        .route("/api/map", get(map))
        .route("/api/edge", get(edge))
        .route_layer(middleware::from_fn_with_state(access, guard));
    let map = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .merge(data)
        .route_layer(middleware::from_fn(literal_host));
    Router::new().route("/metrics", get(metrics)).merge(map).with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, h.parse().expect("header"));
        m
    }

    #[test]
    fn only_literal_hosts_pass() {
        for ok in ["127.0.0.1:9962", "localhost:9962", "LOCALHOST", "[::1]:9962", "[::1]", "198.18.0.1"] {
            assert!(host_is_literal(&host(ok)), "{ok}");
        }
        for bad in ["evil.example:9962", "127.0.0.1.nip.io:9962", "localhost.evil.example", "[evil]:1"] {
            assert!(!host_is_literal(&host(bad)), "{bad}");
        }
        assert!(!host_is_literal(&HeaderMap::new()), "no Host header");
    }

    #[test]
    fn the_url_carries_the_token_and_a_reachable_address() {
        let a = WebAccess::new("0.0.0.0:9962".parse().expect("addr")).expect("token");
        assert_eq!(a.token.len(), 32);
        assert_eq!(a.url(), format!("http://127.0.0.1:9962/?token={}", a.token));
        assert!(a.token_matches(&a.token.clone()));
        assert!(!a.token_matches("00"));
        assert!(!a.token_matches(&"0".repeat(32)));
    }
}

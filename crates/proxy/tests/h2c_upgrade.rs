//! `Upgrade: h2c` through the proxy on real sockets (root: the upstream
//! socket is transparent), with curl `--http2` as the client: when the
//! server speaks HTTP/2 the client is switched and every request after the
//! first goes as an HTTP/2 stream, each decided; when it does not, the
//! upgrade is declined and the same requests go as HTTP/1.1. Either way
//! the server sees each allowed request once and no denied one.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use bulkhead_proxy::server::session;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use support::{CLIENT, SERVER, root};

/// (version, method, path) of each request the server handled.
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// A server on [`SERVER`] that speaks only HTTP/2 (prior knowledge) or
/// only HTTP/1.1, and the proxy in front of it; the runtime runs them
/// until dropped.
struct Setup {
    front: SocketAddr,
    seen: Seen,
    _rt: tokio::runtime::Runtime,
}

fn setup(http2: bool) -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let seen: Seen = Arc::default();
    let front = rt.block_on(async {
        let server = tokio::net::TcpListener::bind((SERVER, 0)).await.expect("server listener");
        let dst = server.local_addr().expect("server address");
        tokio::spawn(serve(server, http2, Arc::clone(&seen)));
        let front = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("proxy listener");
        let addr = front.local_addr().expect("proxy address");
        let shared = support::shared();
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = front.accept().await else { return };
                tokio::spawn(session(stream, peer, dst, Arc::clone(&shared)));
            }
        });
        addr
    });
    Setup { front, seen, _rt: rt }
}

async fn serve(listener: tokio::net::TcpListener, http2: bool, seen: Seen) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let seen = Arc::clone(&seen);
        let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let seen = Arc::clone(&seen);
            async move {
                let version = format!("{:?}", req.version());
                let path = req.uri().path().to_owned();
                seen.lock().expect("lock").push((version, req.method().to_string(), path.clone()));
                let _ = req.into_body().collect().await;
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(format!(
                    "served {path}"
                )))))
            }
        });
        let io = hyper_util::rt::TokioIo::new(stream);
        tokio::spawn(async move {
            if http2 {
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .max_header_list_size(64 * 1024)
                    .serve_connection(io, svc)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            }
        });
    }
}

/// curl `--http2` (which asks to upgrade) from [`CLIENT`] through the
/// proxy, one connection for all `paths`: `version status` of each.
fn curl(front: SocketAddr, args: &[&str], paths: &[&str]) -> Vec<String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "5", "--http2", "--interface", CLIENT, "-w", "%{http_version} %{http_code}\n"]).args(args);
    for p in paths {
        cmd.args(["-o", "/dev/null", &format!("http://{front}{p}")]);
    }
    let out = cmd.output().expect("curl runs (it is installed by .ci/run)");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn an_upgrade_is_taken_up_when_the_server_answers_http2() {
    if !root() {
        return;
    }
    let s = setup(true);
    let got = curl(s.front, &[], &["/api/v1/products/1", "/admin/1", "/api/v1/products/2", "/api//v1/%70roducts/3"]);
    // The first answer came on stream 1 of the upgraded connection.
    assert_eq!(got, ["2 200", "2 403", "2 200", "2 200"]);
    let seen = s.seen.lock().expect("lock").clone();
    let want: Vec<_> =
        (1..=3).map(|n| ("HTTP/2.0".to_owned(), "GET".to_owned(), format!("/api/v1/products/{n}"))).collect();
    assert_eq!(seen, want, "each allowed request once, over HTTP/2, normalized; the denied one never");
}

#[test]
fn an_upgrade_is_declined_when_the_server_does_not_answer_http2() {
    if !root() {
        return;
    }
    let s = setup(false);
    let got = curl(s.front, &[], &["/api/v1/products/1", "/admin/1", "/api/v1/products/2"]);
    assert_eq!(got, ["1.1 200", "1.1 403", "1.1 200"]);
    let seen = s.seen.lock().expect("lock").clone();
    let want = [1, 2].map(|n| ("HTTP/1.1".to_owned(), "GET".to_owned(), format!("/api/v1/products/{n}")));
    assert_eq!(seen, want, "the attempt over HTTP/2 reached no handler; each request once");
}

#[test]
fn a_denied_or_unsafe_request_is_not_upgraded() {
    if !root() {
        return;
    }
    let s = setup(true);
    // Denied: 403 in HTTP/1.1, the server never asked.
    assert_eq!(curl(s.front, &[], &["/admin/1"]), ["1.1 403"]);
    // A request with a body is answered in HTTP/1.1 (here: denied, GET only).
    assert_eq!(curl(s.front, &["-d", "x=1"], &["/api/v1/products/1"]), ["1.1 403"]);
    assert!(s.seen.lock().expect("lock").is_empty());
}

#[test]
fn a_long_authority_reaches_stream_one_in_continuation_frames() {
    if !root() {
        return;
    }
    let s = setup(true);
    let host = format!("Host: {}.test", "a".repeat(20_000));
    let got = curl(s.front, &["-H", &host], &["/api/v1/products/1", "/api/v1/products/2"]);
    assert_eq!(got, ["2 200", "2 200"]);
}

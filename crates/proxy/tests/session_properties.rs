//! The proxy's whole HTTP/1.1 request path on real sockets (root: the
//! upstream socket is transparent): a client pipelines generated requests
//! — allowed, denied, with bodies, and smuggling shapes — through a proxy
//! session to a server (hyper's, an independent parser), and the server
//! must see exactly the requests the rules allowed, one for one, in order,
//! nothing after a refusal, while the client gets one answer per request
//! in order.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_proxy::server::session;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use support::{CLIENT, SERVER, root};

/// One request the client sends, and what should become of it.
#[derive(Debug, Clone)]
enum Atom {
    /// `GET /api/v1/products/N` (allowed), maybe with a body.
    Allowed { n: u8, body: Option<(bool, Vec<u8>)> },
    /// `GET /admin/N` (denied), no body: 403, the connection goes on.
    Denied { n: u8 },
    /// `POST /api/v1/products` with a body (denied): 403, then the proxy closes.
    DeniedWithBody,
    /// A shape a strict server refuses: 400, then the proxy closes.
    Smuggle(usize),
}

const SMUGGLES: [&str; 6] = [
    "GET /api/v1/products HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "GET /api/v1/products HTTP/1.1\r\nHost: b\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "GET /api/v1/products HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "GET /api/v1/products HTTP/1.1\r\nHost: b\r\nX: a\r\n folded\r\n\r\n",
    "GET /api/v1/products HTTP/1.1\r\nHost: b\r\nHost: c\r\n\r\n",
    "GET /api/v1/%2e%2e%2Fadmin HTTP/1.1\r\nHost: b\r\n\r\n",
];

impl Atom {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Atom::Allowed { n, body: None } => {
                format!("GET /api/v1/products/{n} HTTP/1.1\r\nHost: b\r\n\r\n").into_bytes()
            }
            Atom::Allowed { n, body: Some((false, b)) } => {
                let mut r =
                    format!("GET /api/v1/products/{n} HTTP/1.1\r\nHost: b\r\nContent-Length: {}\r\n\r\n", b.len())
                        .into_bytes();
                r.extend_from_slice(b);
                r
            }
            Atom::Allowed { n, body: Some((true, b)) } => {
                let mut r =
                    format!("GET /api/v1/products/{n} HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n")
                        .into_bytes();
                for c in b.chunks(3) {
                    r.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    r.extend_from_slice(c);
                    r.extend_from_slice(b"\r\n");
                }
                r.extend_from_slice(b"0\r\n\r\n");
                r
            }
            Atom::Denied { n } => format!("GET /admin/{n} HTTP/1.1\r\nHost: b\r\n\r\n").into_bytes(),
            Atom::DeniedWithBody => {
                b"POST /api/v1/products HTTP/1.1\r\nHost: b\r\nContent-Length: 4\r\n\r\nGET ".to_vec()
            }
            Atom::Smuggle(i) => SMUGGLES[*i].as_bytes().to_vec(),
        }
    }
}

fn atom() -> impl Strategy<Value = Atom> {
    prop_oneof![
        4 => (any::<u8>(), proptest::option::of((any::<bool>(), proptest::collection::vec(any::<u8>(), 1..20))))
            .prop_map(|(n, body)| Atom::Allowed { n, body }),
        2 => any::<u8>().prop_map(|n| Atom::Denied { n }),
        1 => Just(Atom::DeniedWithBody),
        1 => (0..SMUGGLES.len()).prop_map(Atom::Smuggle),
    ]
}

/// (path, body) of each request the server parsed.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// What the server should see and the client should get.
fn expected(atoms: &[Atom]) -> (Vec<(String, Vec<u8>)>, Vec<u16>) {
    let (mut seen, mut statuses) = (Vec::new(), Vec::new());
    for a in atoms {
        match a {
            Atom::Allowed { n, body } => {
                seen.push((format!("/api/v1/products/{n}"), body.as_ref().map(|(_, b)| b.clone()).unwrap_or_default()));
                statuses.push(200);
            }
            Atom::Denied { .. } => statuses.push(403),
            Atom::DeniedWithBody => {
                statuses.push(403);
                break;
            }
            Atom::Smuggle(_) => {
                statuses.push(400);
                break;
            }
        }
    }
    (seen, statuses)
}

/// The server: records (path, body) of every request hyper parses.
async fn server(listener: tokio::net::TcpListener, seen: Seen) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let seen = Arc::clone(&seen);
                async move {
                    let path = req.uri().path().to_owned();
                    let body = req.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
                    seen.lock().expect("lock").push((path, body));
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn statuses(text: &str) -> Vec<u16> {
    text.split("HTTP/1.1 ").skip(1).filter_map(|r| r.get(..3)?.parse().ok()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_server_sees_exactly_the_allowed_requests_in_order(atoms in proptest::collection::vec(atom(), 1..12)) {
        if !root() {
            return Ok(());
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let (seen, got) = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind((SERVER, 0)).await.expect("server listener");
            let dst = listener.local_addr().expect("server address");
            let seen = Arc::new(Mutex::new(Vec::new()));
            tokio::spawn(server(listener, Arc::clone(&seen)));
            let shared = support::shared();
            let front = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("proxy listener");
            let front_addr = front.local_addr().expect("proxy address");
            let client = tokio::spawn(async move {
                let sock = tokio::net::TcpSocket::new_v4().expect("socket");
                sock.bind(SocketAddr::new(CLIENT.parse().expect("address"), 0)).expect("bind client");
                let mut s = sock.connect(front_addr).await.expect("connect");
                let bytes: Vec<u8> = atoms.iter().flat_map(Atom::bytes).collect();
                let _ = s.write_all(&bytes).await;
                let _ = s.shutdown().await;
                let mut out = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
                (atoms, String::from_utf8_lossy(&out).into_owned())
            });
            let (stream, peer) = front.accept().await.expect("accept");
            let _ = session(stream, peer, dst, shared).await;
            let (atoms, answers) = client.await.expect("client");
            // The server has handled what reached it before the client got
            // its answer; a request after a refusal would be there by now.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let seen = seen.lock().expect("lock").clone();
            ((atoms, seen), answers)
        });
        let ((atoms, seen), answers) = (seen, got);
        let (want_seen, want_statuses) = expected(&atoms);
        prop_assert_eq!(&seen, &want_seen, "the server saw other requests (answers: {})", answers);
        prop_assert_eq!(statuses(&answers), want_statuses, "answers: {}", answers);
    }
}

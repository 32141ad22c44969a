//! An HTTP/2 (prior knowledge) client for the lab's tests and probes: one
//! request, the whole answer with its trailers. Runs in the calling
//! thread's network namespace.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What came back.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// `:status`.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Vec<u8>,
    /// Trailers (gRPC's status is here, or in `headers` for a
    /// trailers-only answer).
    pub trailers: HeaderMap,
}

impl Answer {
    /// `grpc-status`, from the trailers or a trailers-only answer's headers.
    pub fn grpc_status(&self) -> Option<u32> {
        self.trailers
            .get("grpc-status")
            .or_else(|| self.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok()?.parse().ok())
    }
}

/// Sends `method path` with `headers` and `body` to `dst` over a new
/// HTTP/2 connection, waiting at most `timeout` for the whole answer.
pub fn request(
    dst: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Answer> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        tokio::time::timeout(timeout, exchange(dst, method, path, headers, body)).await.map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, format!("no HTTP/2 answer from {dst} in {timeout:?}"))
        })?
    })
}

async fn exchange(
    dst: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Answer> {
    let stream = tokio::net::TcpStream::connect(dst).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(format!("http://{dst}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).map_err(io::Error::other)?;
    let resp = sender.send_request(req).await.map_err(io::Error::other)?;
    let (parts, mut incoming) = resp.into_parts();
    let mut answer = Answer { status: parts.status.as_u16(), headers: parts.headers, ..Answer::default() };
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(io::Error::other)?;
        match frame.into_data() {
            Ok(data) => answer.body.extend_from_slice(&data),
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    answer.trailers = t;
                }
            }
        }
    }
    Ok(answer)
}

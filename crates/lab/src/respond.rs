//! A lab pod's container ports: TCP echo, UDP echo, and HTTP on ports
//! whose name starts with `http` or `grpc` (hyper: HTTP/1.1 and HTTP/2
//! with prior knowledge), answering with the pod's name, the method, the
//! path and the request's `x-` headers (repeats joined with `,`), so a
//! probe or `curl` sees who answered and what reached it. A gRPC call
//! (`content-type: application/grpc`) is answered by a generic service: one
//! message whose field 1 (a string) is the method called, then
//! `grpc-status: 0`.
//!
//! It runs inside the pod's network namespace (started there by `lab up`),
//! listens on `[::]` (dual-stack), and prints `ready` once every socket is
//! bound. This kernel has no SCTP stack, so SCTP ports are reported and
//! skipped.

use std::convert::Infallible;
use std::io;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, UdpSocket};

/// A container port and what answers on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// HTTP and gRPC (a port whose name starts with `http` or `grpc`).
    Http(u16),
    /// TCP echo.
    TcpEcho(u16),
    /// UDP echo.
    UdpEcho(u16),
}

impl Port {
    /// `PORT/PROTOCOL/NAME` (protocol TCP when absent); `None` for SCTP,
    /// which this kernel cannot serve (said on stderr).
    pub fn parse(spec: &str) -> Result<Option<Port>, String> {
        let mut it = spec.split('/');
        let port: u16 = it.next().unwrap_or("").parse().map_err(|e| format!("port in `{spec}`: {e}"))?;
        let proto = it.next().unwrap_or("TCP");
        let name = it.next().unwrap_or("");
        Ok(match proto {
            "TCP" if name.starts_with("http") || name.starts_with("grpc") => Some(Port::Http(port)),
            "TCP" => Some(Port::TcpEcho(port)),
            "UDP" => Some(Port::UdpEcho(port)),
            "SCTP" => {
                eprintln!("responder: {port}/SCTP not served: this kernel has no SCTP stack");
                None
            }
            other => return Err(format!("`{spec}`: protocol {other} is not TCP, UDP or SCTP")),
        })
    }
}

/// Serves `ports` for `pod` on the calling thread's network namespace,
/// prints `ready` once every socket is bound, and runs until killed.
pub fn serve(pod: String, ports: Vec<Port>) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let pod: &'static str = Box::leak(pod.into_boxed_str());
        let mut tasks = tokio::task::JoinSet::new();
        for p in ports {
            match p {
                Port::Http(port) => {
                    let l = TcpListener::bind(("::", port)).await.map_err(bind_error(port, "TCP"))?;
                    tasks.spawn(http(l, pod));
                }
                Port::TcpEcho(port) => {
                    let l = TcpListener::bind(("::", port)).await.map_err(bind_error(port, "TCP"))?;
                    tasks.spawn(tcp_echo(l));
                }
                Port::UdpEcho(port) => {
                    let s = UdpSocket::bind(("::", port)).await.map_err(bind_error(port, "UDP"))?;
                    tasks.spawn(udp_echo(s));
                }
            }
        }
        println!("ready");
        while tasks.join_next().await.is_some() {}
        Ok(())
    })
}

fn bind_error(port: u16, proto: &'static str) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{port}/{proto}: {e}"))
}

async fn http(l: TcpListener, pod: &'static str) {
    loop {
        let Ok((stream, _)) = l.accept().await else { continue };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| async move {
                use http_body_util::BodyExt as _;
                // The whole request first, as a handler that reads its body
                // does: the answer never comes while the body still arrives.
                let (parts, body) = req.into_parts();
                let _ = body.collect().await;
                Ok::<_, Infallible>(answer(pod, &Request::from_parts(parts, ())))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn answer(pod: &str, req: &Request<()>) -> Response<Body> {
    use http_body_util::BodyExt as _;
    let grpc = req.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        // One length-prefixed message: protobuf field 1 (string) = the method.
        let method = req.uri().path().as_bytes();
        let mut msg = vec![0x0a];
        let mut n = method.len();
        while n >= 0x80 {
            msg.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        msg.push(n as u8);
        msg.extend_from_slice(method);
        let mut frame = vec![0u8];
        frame.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
        frame.extend_from_slice(&msg);
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
        let body = Full::new(Bytes::from(frame)).with_trailers(async move { Some(Ok(trailers)) }).boxed();
        return Response::builder().header("content-type", "application/grpc").body(body).unwrap_or_default();
    }
    let mut body = serde_json::json!({"pod": pod, "method": req.method().as_str(), "path": req.uri().path()});
    // `x-` headers, so a test sees what a proxy forwarded (absent when none).
    let mut echoed = serde_json::Map::new();
    for (name, value) in req.headers().iter().filter(|(n, _)| n.as_str().starts_with("x-")) {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match echoed.get_mut(name.as_str()) {
            Some(serde_json::Value::String(v)) => *v = format!("{v},{value}"),
            _ => drop(echoed.insert(name.as_str().to_owned(), value.into())),
        }
    }
    if !echoed.is_empty() {
        body["headers"] = echoed.into();
    }
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!("{body}\n"))).boxed())
        .unwrap_or_default()
}

async fn tcp_echo(l: TcpListener) {
    loop {
        let Ok((mut stream, _)) = l.accept().await else { continue };
        tokio::spawn(async move {
            let (mut r, mut w) = stream.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
    }
}

async fn udp_echo(s: UdpSocket) {
    let mut buf = vec![0u8; 65_536];
    loop {
        if let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    }
}

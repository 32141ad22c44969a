//! A lab pod's container ports: TCP echo, UDP echo, and HTTP on ports
//! whose name starts with `http` (hyper), answering with the pod's name,
//! the method and the path, so a probe or `curl` sees who answered.
//!
//! It runs inside the pod's network namespace (started there by `lab up`),
//! listens on `[::]` (dual-stack), and prints `ready` once every socket is
//! bound. This kernel has no SCTP stack, so SCTP ports are reported and
//! skipped.

use std::convert::Infallible;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, UdpSocket};

#[derive(Debug, Args)]
pub struct RespondArgs {
    /// The pod (`namespace/name`), named in answers.
    #[arg(long)]
    pub pod: String,
    /// Ports as PORT/PROTOCOL/NAME, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub ports: Vec<String>,
}

enum Port {
    Http(u16),
    TcpEcho(u16),
    UdpEcho(u16),
}

fn parse(spec: &str) -> Result<Option<Port>> {
    let mut it = spec.split('/');
    let port: u16 = it.next().unwrap_or("").parse().with_context(|| format!("port in `{spec}`"))?;
    let proto = it.next().unwrap_or("TCP");
    let name = it.next().unwrap_or("");
    Ok(match proto {
        "TCP" if name.starts_with("http") => Some(Port::Http(port)),
        "TCP" => Some(Port::TcpEcho(port)),
        "UDP" => Some(Port::UdpEcho(port)),
        "SCTP" => {
            eprintln!("responder: {port}/SCTP not served: this kernel has no SCTP stack");
            None
        }
        other => bail!("`{spec}`: protocol {other} is not TCP, UDP or SCTP"),
    })
}

pub fn run(a: RespondArgs) -> Result<ExitCode> {
    let ports: Vec<Port> =
        a.ports.iter().map(|s| parse(s)).collect::<Result<Vec<_>>>()?.into_iter().flatten().collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let pod: &'static str = Box::leak(a.pod.into_boxed_str());
        let mut tasks = tokio::task::JoinSet::new();
        for p in ports {
            match p {
                Port::Http(port) => {
                    let l = TcpListener::bind(("::", port)).await.with_context(|| format!("{port}/TCP"))?;
                    tasks.spawn(http(l, pod));
                }
                Port::TcpEcho(port) => {
                    let l = TcpListener::bind(("::", port)).await.with_context(|| format!("{port}/TCP"))?;
                    tasks.spawn(tcp_echo(l));
                }
                Port::UdpEcho(port) => {
                    let s = UdpSocket::bind(("::", port)).await.with_context(|| format!("{port}/UDP"))?;
                    tasks.spawn(udp_echo(s));
                }
            }
        }
        println!("ready");
        while tasks.join_next().await.is_some() {}
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn http(l: TcpListener, pod: &'static str) {
    loop {
        let Ok((stream, _)) = l.accept().await else { continue };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| async move {
                let body = serde_json::json!({"pod": pod, "method": req.method().as_str(), "path": req.uri().path()});
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(format!("{body}\n"))))
                        .unwrap_or_default(),
                )
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
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

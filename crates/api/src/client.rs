//! A blocking client for the agent's API, for the CLI and the CNI plugin.
//!
//! Each call runs one HTTP/1.1 exchange with hyper on a current-thread
//! tokio runtime over the unix socket: callers are short-lived commands,
//! so a connection pool would buy nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ErrorBody;

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No agent answers at the socket.
    #[error(
        "cannot reach the agent at {socket}: {source} (start one with `bulkhead agent`, or `bulkhead lab up`, which starts one; --socket or BULKHEAD_SOCKET names another)"
    )]
    Unreachable {
        /// The socket path.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed midway or the answer was not what the API says.
    #[error("talking to the agent at {socket}: {message}")]
    Protocol {
        /// The socket path.
        socket: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The agent refused the request.
    #[error("{}", .body.error)]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The agent's explanation.
        body: ErrorBody,
    },
}

impl ClientError {
    /// The HTTP status of a refusal (404 for an unknown endpoint, …).
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The client.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client of the agent at `socket`, with a 120 s limit per call.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into(), timeout: Duration::from_secs(120) }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sets the limit per call.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `GET path`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>)
    }

    /// `POST path` with a JSON body.
    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.call(Method::POST, path, Some(body))
    }

    /// `PUT path` with a JSON body.
    pub fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.call(Method::PUT, path, Some(body))
    }

    /// `DELETE path`.
    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::DELETE, path, None::<&()>)
    }

    fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let protocol = |message: String| ClientError::Protocol { socket: self.socket.clone(), message };
        let payload = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| protocol(format!("encoding the request: {e}")))?,
            None => Vec::new(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| protocol(format!("starting the I/O runtime: {e}")))?;
        let exchange = async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Unreachable { socket: self.socket.clone(), source })?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| protocol(format!("handshake: {e}")))?;
            tokio::spawn(conn);
            let req = Request::builder()
                .method(method)
                .uri(format!("http://agent/v1{path}"))
                .header("host", "agent")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(payload)))
                .map_err(|e| protocol(format!("building the request: {e}")))?;
            let resp = sender.send_request(req).await.map_err(|e| protocol(format!("request: {e}")))?;
            let status = resp.status();
            let bytes =
                resp.into_body().collect().await.map_err(|e| protocol(format!("reading the answer: {e}")))?.to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = rt
            .block_on(async { tokio::time::timeout(self.timeout, exchange).await })
            .map_err(|_| protocol(format!("no answer within {} s", self.timeout.as_secs())))??;
        if status != StatusCode::OK {
            let body = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| ErrorBody {
                error: format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes).trim()),
                details: Vec::new(),
            });
            return Err(ClientError::Refused { status: status.as_u16(), body });
        }
        serde_json::from_slice(&bytes).map_err(|e| protocol(format!("the answer is not the expected JSON: {e}")))
    }
}

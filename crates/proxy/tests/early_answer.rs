//! A server that answers before the request's body has all arrived, and
//! closes (a 413 for an upload it will not take): the proxy relays that
//! answer rather than losing it to the reset its next body write would
//! bring (root: the upstream socket is transparent).

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_proxy::server::session;
use support::{CLIENT, SERVER, root};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[test]
fn an_answer_sent_before_the_body_ends_reaches_the_client() {
    if !root() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let front = rt.block_on(async {
        let server = tokio::net::TcpListener::bind((SERVER, 0)).await.expect("server listener");
        let dst = server.local_addr().expect("server address");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = server.accept().await {
                // The head alone (a byte at a time), then — with the body's
                // first part arrived and unread — the answer, and close: the
                // close resets the connection, as a server's does.
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => head.push(b[0]),
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = s
                    .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                drop(s);
            }
        });
        let front = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("proxy listener");
        let addr = front.local_addr().expect("proxy address");
        let shared = support::shared();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = front.accept().await {
                tokio::spawn(session(stream, peer, dst, Arc::clone(&shared)));
            }
        });
        addr
    });
    for _ in 0..5 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        s.bind(&SocketAddr::new(CLIENT.parse().expect("client"), 0).into()).expect("bind the client's address");
        s.connect(&front.into()).expect("connect");
        let mut c: TcpStream = s.into();
        c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        c.write_all(b"GET /api/v1/products HTTP/1.1\r\nHost: backend\r\nContent-Length: 10\r\n\r\n01234")
            .expect("head");
        // The server has answered and closed by now; the rest of the body follows.
        std::thread::sleep(Duration::from_millis(200));
        let _ = c.write_all(b"56789");
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 413"), "the server's answer was lost: {got:?}");
    }
}

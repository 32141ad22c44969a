//! UDP queries share an upstream socket per client address: each goes out
//! under its own random ID, gets its own answer back under the client's ID,
//! a forged or stray datagram answers nothing, an upstream port that is
//! closed fails a query at once, and the source port changes once the
//! socket stops taking queries (root: the socket is transparent).

#[allow(dead_code, reason = "the socket tests share support; this one needs only its root check and addresses")]
mod support;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_proxy::dns::Query;
use bulkhead_proxy::dns_upstream::{PORT_LIFETIME, Upstreams};
use hickory_proto::op::{Message, OpCode, Query as Question};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use support::{CLIENT, SERVER, root};

/// A client's query for `name`, under the ID every client here uses.
fn query(name: &str) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 0x1234;
    m.metadata.recursion_desired = true;
    m.add_query(Question::query(Name::from_ascii(name).expect("name"), RecordType::A));
    m.to_vec().expect("encode")
}

/// The address the stand-in upstream gives `nK.test.`: 198.18.0.K.
fn address_of(name: &str) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, name.trim_start_matches('n').trim_end_matches(".test.").parse().unwrap_or(99))
}

#[test]
fn queries_share_a_socket_each_gets_its_own_answer_and_forgeries_answer_nothing() {
    if !root() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    rt.block_on(async {
        // The upstream: before each real answer (sent 50 ms late, so the
        // queries overlap) a forged one — the right ID, another question —
        // and a datagram under an ID nobody used; `silent.test.` is never
        // answered. It records each query's source port and ID.
        let up = Arc::new(tokio::net::UdpSocket::bind((SERVER, 0)).await.expect("upstream"));
        let upstream = up.local_addr().expect("upstream address");
        let seen: Arc<Mutex<Vec<(u16, u16)>>> = Arc::default();
        tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                let mut buf = [0u8; 512];
                while let Ok((n, from)) = up.recv_from(&mut buf).await {
                    let q = Message::from_vec(&buf[..n]).expect("a query");
                    seen.lock().expect("lock").push((from.port(), q.metadata.id));
                    let name = q.queries[0].name().to_ascii();
                    if name == "silent.test." {
                        continue;
                    }
                    let answer = |qname: &str, id: u16| {
                        let mut m = Message::response(id, OpCode::Query);
                        let owner = Name::from_ascii(qname).expect("name");
                        m.add_query(Question::query(owner.clone(), RecordType::A));
                        m.answers = vec![Record::from_rdata(owner, 30, RData::A(A(address_of(qname))))];
                        m.to_vec().expect("encode")
                    };
                    let up = Arc::clone(&up);
                    let id = q.metadata.id;
                    tokio::spawn(async move {
                        up.send_to(&answer("forged.test.", id), from).await.expect("forged");
                        up.send_to(&answer(&name, id.wrapping_add(1)), from).await.expect("stray");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        up.send_to(&answer(&name, id), from).await.expect("answer");
                    });
                }
            }
        });

        let upstreams = Arc::new(Upstreams::default());
        let client: IpAddr = CLIENT.parse().expect("client");
        let ask = |name: String, timeout: Duration| {
            let upstreams = Arc::clone(&upstreams);
            tokio::spawn(async move {
                let bytes = query(&name);
                let q = Query::parse(&bytes).expect("query");
                upstreams.ask(client, upstream, &bytes, &q, timeout).await
            })
        };
        let asks: Vec<_> = (0..20).map(|k| ask(format!("n{k}.test."), Duration::from_secs(2))).collect();
        for (k, a) in asks.into_iter().enumerate() {
            let (bytes, learnt) = a.await.expect("task").expect("an answer");
            assert_eq!(Message::from_vec(&bytes).expect("answer").metadata.id, 0x1234, "the client's ID back");
            assert_eq!(learnt.addrs, vec![IpAddr::from(address_of(&format!("n{k}.test.")))], "query {k}'s own answer");
        }
        let first: Vec<(u16, u16)> = seen.lock().expect("lock").drain(..).collect();
        let ports: BTreeSet<u16> = first.iter().map(|(p, _)| *p).collect();
        let ids: BTreeSet<u16> = first.iter().map(|(_, id)| *id).collect();
        assert_eq!((first.len(), ports.len(), ids.len()), (20, 1, 20), "one socket, a distinct ID each: {first:?}");

        // Unanswered: an error (the proxy answers SERVFAIL), in time.
        let t0 = std::time::Instant::now();
        let e = ask("silent.test.".into(), Duration::from_millis(200)).await.expect("task").expect_err("no answer");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        seen.lock().expect("lock").clear();

        // Nothing listening upstream (the ICMP error): an error at once.
        let closed = std::net::UdpSocket::bind((SERVER, 0)).expect("a port").local_addr().expect("address");
        let bytes = query("n1.test.");
        let q = Query::parse(&bytes).expect("query");
        let t0 = std::time::Instant::now();
        let e = upstreams.ask(client, closed, &bytes, &q, Duration::from_secs(5)).await.expect_err("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());

        // Past its lifetime a socket takes no new query: a new port.
        tokio::time::sleep(PORT_LIFETIME).await;
        ask("n7.test.".into(), Duration::from_secs(2)).await.expect("task").expect("an answer");
        let later: HashMap<u16, u16> = seen.lock().expect("lock").drain(..).collect();
        let later_ports: BTreeSet<u16> = later.keys().copied().collect();
        assert!(later_ports.is_disjoint(&ports), "the port changed: {ports:?} then {later_ports:?}");
    });
}

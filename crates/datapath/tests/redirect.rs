//! The transparent redirect to the L7 proxy, on real connections (root): a
//! connection that an L7 rule covers reaches the proxy's listener in the
//! node's namespace, never the server, with the original destination as
//! the accepted socket's own address; without a proxy socket it goes
//! nowhere (dropped and counted), also when the proxy dies mid-connection.
//! The proxy's own connection to the server keeps the client's address and
//! is judged by the server's policy as the client: the proxy gives the
//! client no reach it did not have. A transparent listener and socket stand
//! in for the proxy.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use bulkhead_datapath::abi::Reason;
use bulkhead_datapath::netns;
use bulkhead_datapath::sync::ProxyPorts;
use bulkhead_lab::uninterrupted;
use socket2::{Domain, Socket, Type};
use support::{Lab, privileged, v4, v6};

const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: rd}}
- {apiVersion: v1, kind: Pod, metadata: {name: client, namespace: rd, labels: {app: client}},
   status: {podIPs: [{ip: 198.18.91.1}, {ip: "fd00:b::91:1"}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: server, namespace: rd, labels: {app: server}},
   status: {podIPs: [{ip: 198.18.91.2}, {ip: "fd00:b::91:2"}]}}
"#;

/// The client may send only `GET` requests to the server on TCP 80.
const CLIENT_L7: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: rd}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET}]}}]
"#;

/// The server admits the client on TCP 80.
const SERVER_ADMITS_CLIENT: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: rd}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;

/// The server admits only pods labelled `app: trusted` (none here).
const SERVER_ADMITS_TRUSTED: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: rd}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: trusted}}]
"#;

/// The server takes only `GET` requests from the client on TCP 80 (its
/// ingress L7 rule; the client has no policy).
const SERVER_L7: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: rd}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET}]}}]
"#;

/// The client may ask the server (its resolver) on UDP 53, for names under
/// `example.` only: a DNS rule.
const CLIENT_DNS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: rd}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts: [{ports: [{port: "53", protocol: UDP}], rules: {dns: [{matchPattern: "*.example"}]}}]
"#;

const PROXY_PORT: u16 = 15001;
const DNS_PROXY_PORT: u16 = 15053;

/// The mark of the proxy's upstream sockets (`BH_FROM_PROXY_MARK`).
const FROM_PROXY_MARK: u32 = 0xa00;

/// The node's policy routing for marked packets (DESIGN.md §4): a packet
/// the datapath assigned to a local socket is routed to the local stack.
fn route_marked_packets_locally(lab: &Lab) {
    let ns = lab.node.path();
    let name = ns.file_name().and_then(|n| n.to_str()).expect("netns name").to_owned();
    for args in [
        "rule add fwmark 0x200/0xf00 lookup 2004 pref 9",
        "route add local 0.0.0.0/0 dev lo table 2004",
        "-6 rule add fwmark 0x200/0xf00 lookup 2004 pref 9",
        "-6 route add local ::/0 dev lo table 2004",
    ] {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["-n", &name]).args(args.split(' '));
        let out = cmd.output().expect("run ip");
        assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The stand-in proxy: transparent listeners on the proxy port in the
/// node's namespace, one per family.
fn proxy_listeners(lab: &Lab) -> Vec<TcpListener> {
    netns::run_in(&lab.node.path(), || {
        [false, true]
            .into_iter()
            .map(|v6| {
                let s = Socket::new(if v6 { Domain::IPV6 } else { Domain::IPV4 }, Type::STREAM, None)?;
                let any: IpAddr = if v6 { "::".parse().expect("literal") } else { "0.0.0.0".parse().expect("literal") };
                if v6 {
                    s.set_only_v6(true)?;
                    s.set_ip_transparent_v6(true)?;
                } else {
                    s.set_ip_transparent_v4(true)?;
                }
                s.set_reuse_address(true)?;
                s.bind(&SocketAddr::new(any, PROXY_PORT).into())?;
                s.listen(16)?;
                let l: TcpListener = s.into();
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .collect::<std::io::Result<Vec<_>>>()
    })
    .expect("node netns")
    .expect("proxy listeners")
}

/// The stand-in proxy dies: its listeners stop at once. Shut down, not just
/// dropped — a child another test is spawning may hold a copy of their
/// descriptors until it execs, and a listener kept alive that way would
/// still answer a connection (as it never would for a process that died).
fn die(proxy: Vec<TcpListener>) {
    for l in proxy {
        socket2::SockRef::from(&l).shutdown(std::net::Shutdown::Both).expect("shut the listener down");
    }
}

/// The server's own listener on port 80 (it must never see a connection).
fn server_listener(lab: &Lab) -> TcpListener {
    let l = netns::run_in(&netns::named(&lab.pods["rd/server"].netns), || TcpListener::bind("[::]:80"))
        .expect("server netns")
        .expect("bind :80");
    l.set_nonblocking(true).expect("nonblocking");
    l
}

fn connect(lab: &Lab, dst: SocketAddr) -> std::io::Result<TcpStream> {
    netns::run_in(&netns::named(&lab.pods["rd/client"].netns), || {
        TcpStream::connect_timeout(&dst, Duration::from_millis(1500))
    })
    .expect("client netns")
}

/// A connection from the client pod whose socket carries `mark` (a
/// compromised pod forging the proxy's mark).
fn connect_marked(lab: &Lab, dst: SocketAddr, mark: u32) -> std::io::Result<TcpStream> {
    netns::run_in(&netns::named(&lab.pods["rd/client"].netns), || {
        let s = Socket::new(if dst.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 }, Type::STREAM, None)?;
        s.set_mark(mark)?;
        s.connect_timeout(&dst.into(), Duration::from_millis(1500))?;
        Ok(s.into())
    })
    .expect("client netns")
}

/// A connection one of `listeners` accepted, waiting a little for it:
/// the stream, its own address and its peer's.
fn accepted(listeners: &[&TcpListener]) -> Option<(TcpStream, SocketAddr, SocketAddr)> {
    for _ in 0..200 {
        for l in listeners {
            if let Ok((s, peer)) = l.accept() {
                let local = s.local_addr().expect("local address");
                s.set_nonblocking(false).expect("blocking");
                return Some((s, local, peer));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// A lab whose datapath names the proxy's port and whose node routes
/// marked packets locally, enforcing `policies`; the server listens on 80.
/// With each (client, server) address pair, IPv4 then IPv6.
fn lab_with_proxy_port(tag: &str, policies: &str) -> (Lab, TcpListener, [(IpAddr, IpAddr); 2]) {
    let mut lab = Lab::up(tag, CLUSTER, "");
    lab.sync.set_proxy_ports(ProxyPorts { http: PROXY_PORT, dns: DNS_PROXY_PORT });
    lab.replace_policies(policies);
    route_marked_packets_locally(&lab);
    let server = server_listener(&lab);
    let (c, s) = (&lab.pods["rd/client"], &lab.pods["rd/server"]);
    let pairs = [(IpAddr::V4(v4(c)), IpAddr::V4(v4(s))), (IpAddr::V6(v6(c)), IpAddr::V6(v6(s)))];
    (lab, server, pairs)
}

/// One connection from the client to the server's port 80 through the
/// stand-in proxy: the proxy accepts it with the original destination,
/// opens its own (marked, with the client's address) to the server, which
/// sees the client; data crosses both halves both ways.
fn through_the_proxy(lab: &Lab, proxy: &[TcpListener], server: &TcpListener, (c_ip, s_ip): (IpAddr, IpAddr)) {
    let dst = SocketAddr::new(s_ip, 80);
    let mut c = connect(lab, dst).unwrap_or_else(|e| panic!("{dst}: {e}"));
    let listeners: Vec<&TcpListener> = proxy.iter().collect();
    let (mut p, local, _) = accepted(&listeners).unwrap_or_else(|| panic!("{dst}: the proxy accepted nothing"));
    assert_eq!(local, dst, "the original destination");
    let mut up = upstream(lab, c_ip, local).unwrap_or_else(|e| panic!("upstream to {local}: {e}"));
    let (mut s, _, peer) = accepted(&[server]).unwrap_or_else(|| panic!("{dst}: the server accepted nothing"));
    assert_eq!(peer.ip().to_canonical(), c_ip, "the server sees the client's address");
    carries(&mut c, &mut p, b"GET / HTTP/1.1");
    carries(&mut up, &mut s, b"GET / HTTP/1.1");
    carries(&mut s, &mut up, b"HTTP/1.1 200 OK");
    carries(&mut p, &mut c, b"HTTP/1.1 200 OK");
}

/// The stand-in proxy's connection to `dst` on behalf of the client at
/// `client`: transparent, from the client's address, marked.
fn upstream(lab: &Lab, client: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    upstream_marked(lab, client, dst, FROM_PROXY_MARK)
}

fn upstream_marked(lab: &Lab, client: IpAddr, dst: SocketAddr, mark: u32) -> std::io::Result<TcpStream> {
    netns::run_in(&lab.node.path(), || {
        let s = Socket::new(if dst.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 }, Type::STREAM, None)?;
        if dst.is_ipv6() {
            s.set_ip_transparent_v6(true)?;
        } else {
            s.set_ip_transparent_v4(true)?;
        }
        s.set_mark(mark)?;
        s.bind(&SocketAddr::new(client, 0).into())?;
        s.connect_timeout(&dst.into(), Duration::from_millis(1500))?;
        Ok(s.into())
    })
    .expect("node netns")
}

/// Sends `data` on `from` and reads it on `to`.
fn carries(from: &mut TcpStream, to: &mut TcpStream, data: &[u8]) {
    from.write_all(data).expect("write");
    let mut buf = vec![0u8; data.len()];
    to.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    uninterrupted(|| to.read_exact(&mut buf)).expect("read");
    assert_eq!(buf, data);
}

fn unavailable(lab: &mut Lab) -> u64 {
    lab.dp().view().counters().expect("counters").packets(Reason::ProxyUnavailable)
}

#[test]
fn l7_connections_reach_the_proxy_and_never_the_server() {
    if !privileged("l7_connections_reach_the_proxy_and_never_the_server") {
        return;
    }
    let (mut lab, server, pairs) = lab_with_proxy_port("rd", CLIENT_L7);
    let client = lab.pods["rd/client"].clone();
    let targets = pairs.map(|(_, s)| SocketAddr::new(s, 80));

    // No proxy socket: the connection goes nowhere, and is counted.
    let before = unavailable(&mut lab);
    for dst in targets {
        assert!(connect(&lab, dst).is_err(), "{dst}: connected with no proxy");
    }
    assert!(unavailable(&mut lab) >= before + 2, "no PROXY_UNAVAILABLE drop counted");

    // With the proxy listening: the proxy holds the connection, its own
    // address is the original destination, the peer is the client.
    let proxy = proxy_listeners(&lab);
    let mut held = Vec::new();
    for dst in targets {
        let mut c = connect(&lab, dst).unwrap_or_else(|e| panic!("{dst}: {e}"));
        let listeners: Vec<&TcpListener> = proxy.iter().collect();
        let (mut p, local, peer) = accepted(&listeners).unwrap_or_else(|| panic!("{dst}: the proxy accepted nothing"));
        assert_eq!(local, dst, "the original destination");
        assert!(client.ips.contains(&peer.ip()), "{peer} is not the client");
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("request");
        let mut buf = [0u8; 18];
        p.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        uninterrupted(|| p.read_exact(&mut buf)).expect("the proxy reads the request");
        p.write_all(b"ok").expect("answer");
        let mut ok = [0u8; 2];
        c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        uninterrupted(|| c.read_exact(&mut ok)).expect("the client reads the answer");
        assert_eq!(&ok, b"ok");
        held.push((c, p));
    }
    assert!(server.accept().is_err(), "the server saw a connection past the proxy");

    // The proxy dies: its connections and new ones go nowhere.
    die(proxy);
    let dropped_before = unavailable(&mut lab);
    for (mut c, p) in held {
        drop(p);
        // The proxy's kernel may reset the connection as its socket closes;
        // whatever the client sends next reaches no one.
        let _ = c.write_all(b"more");
    }
    for dst in targets {
        assert!(connect(&lab, dst).is_err(), "{dst}: connected after the proxy died");
    }
    assert!(unavailable(&mut lab) > dropped_before, "no PROXY_UNAVAILABLE drop after the proxy died");
    assert!(server.accept().is_err(), "the server saw a connection past the proxy");
}

#[test]
fn the_proxy_reaches_the_server_as_the_client_and_no_further() {
    if !privileged("the_proxy_reaches_the_server_as_the_client_and_no_further") {
        return;
    }
    let (mut lab, server, pairs) = lab_with_proxy_port("up", &format!("{CLIENT_L7}---{SERVER_ADMITS_CLIENT}"));
    let proxy = proxy_listeners(&lab);
    for pair in pairs {
        through_the_proxy(&lab, &proxy, &server, pair);
    }
    // The server stops admitting the client: the proxy cannot reach it for
    // the client either, and the drop is the server's policy's.
    lab.replace_policies(&format!("{CLIENT_L7}---{SERVER_ADMITS_TRUSTED}"));
    let denied = |lab: &mut Lab| lab.dp().view().counters().expect("counters").packets(Reason::PolicyDenied);
    let before = denied(&mut lab);
    for (c_ip, s_ip) in pairs {
        let dst = SocketAddr::new(s_ip, 80);
        assert!(upstream(&lab, c_ip, dst).is_err(), "{dst}: the proxy reached the server for a client it denies");
    }
    assert!(denied(&mut lab) >= before + 2, "the server's policy did not drop the proxy's connections");
}

#[test]
fn the_servers_l7_rules_send_its_clients_through_the_proxy() {
    if !privileged("the_servers_l7_rules_send_its_clients_through_the_proxy") {
        return;
    }
    let (mut lab, server, pairs) = lab_with_proxy_port("in", SERVER_L7);

    // No proxy: the client's connection goes nowhere — also when the
    // client (root in its pod) marks its socket as the proxy's own: the
    // mark does not survive the veth into the node.
    let before = unavailable(&mut lab);
    for (_, s_ip) in pairs {
        let dst = SocketAddr::new(s_ip, 80);
        assert!(connect(&lab, dst).is_err(), "{s_ip}: connected with no proxy");
        assert!(connect_marked(&lab, dst, FROM_PROXY_MARK).is_err(), "{dst}: the proxy's mark, forged, passed");
    }
    assert!(unavailable(&mut lab) >= before + 4, "no PROXY_UNAVAILABLE drop counted");

    // The proxy gets the connection; its own, marked connection reaches the
    // server, which sees the client.
    let proxy = proxy_listeners(&lab);
    for pair in pairs {
        through_the_proxy(&lab, &proxy, &server, pair);
    }
    // A connection from the node with the client's address but without the
    // proxy's mark is not the proxy's: the server's L7 rule still stands.
    let before = unavailable(&mut lab);
    for (c_ip, s_ip) in pairs {
        let dst = SocketAddr::new(s_ip, 80);
        assert!(upstream_marked(&lab, c_ip, dst, 0).is_err(), "{dst}: an unmarked connection passed the L7 rule");
    }
    assert!(unavailable(&mut lab) >= before + 2, "no PROXY_UNAVAILABLE drop counted");
}

/// A UDP socket in the netns at `ns` bound to `addr` (transparent when
/// `transparent`), with a read timeout.
fn udp_in(ns: &std::path::Path, addr: SocketAddr, transparent: bool, mark: u32) -> UdpSocket {
    netns::run_in(ns, || {
        let s = Socket::new(if addr.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 }, Type::DGRAM, None)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        if transparent {
            if addr.is_ipv6() {
                s.set_ip_transparent_v6(true)?;
            } else {
                s.set_ip_transparent_v4(true)?;
            }
            s.set_reuse_address(true)?;
        }
        if mark != 0 {
            s.set_mark(mark)?;
        }
        s.bind(&addr.into())?;
        s.set_read_timeout(Some(Duration::from_millis(700)))?;
        Ok::<UdpSocket, std::io::Error>(s.into())
    })
    .expect("netns")
    .unwrap_or_else(|e| panic!("UDP socket on {addr}: {e}"))
}

/// The stand-in DNS proxy's sockets: transparent, wildcard-bound on the DNS
/// proxy port, reporting each datagram's original destination.
fn dns_proxy_sockets(lab: &Lab) -> Vec<UdpSocket> {
    use nix::sys::socket::{setsockopt, sockopt};
    [IpAddr::from([0u8; 4]), IpAddr::from([0u16; 8])]
        .into_iter()
        .map(|any| {
            let s = udp_in(&lab.node.path(), SocketAddr::new(any, DNS_PROXY_PORT), true, 0);
            if any.is_ipv6() {
                setsockopt(&s, sockopt::Ipv6OrigDstAddr, &true).expect("IPV6_RECVORIGDSTADDR");
            } else {
                setsockopt(&s, sockopt::Ipv4OrigDstAddr, &true).expect("IP_RECVORIGDSTADDR");
            }
            s
        })
        .collect()
}

/// A datagram on `s`: its bytes, sender and original destination.
fn recv_orig(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr, SocketAddr)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
    use std::os::fd::AsRawFd as _;
    let mut buf = [0u8; 512];
    let mut cmsg = nix::cmsg_space!(nix::libc::sockaddr_in6);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<SockaddrStorage>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()).ok()?;
    let from = msg.address.and_then(|a| {
        a.as_sockaddr_in()
            .map(|s| SocketAddr::from(std::net::SocketAddrV4::from(*s)))
            .or_else(|| a.as_sockaddr_in6().map(|s| SocketAddr::from(std::net::SocketAddrV6::from(*s))))
    })?;
    let n = msg.bytes;
    let dst = msg.cmsgs().ok()?.find_map(|c| match c {
        ControlMessageOwned::Ipv4OrigDstAddr(a) => Some(SocketAddr::new(
            std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into(),
            u16::from_be(a.sin_port),
        )),
        ControlMessageOwned::Ipv6OrigDstAddr(a) => {
            Some(SocketAddr::new(std::net::Ipv6Addr::from(a.sin6_addr.s6_addr).into(), u16::from_be(a.sin6_port)))
        }
        _ => None,
    })?;
    Some((buf[..n].to_vec(), from, dst))
}

/// A datagram on `s`, its bytes and sender.
fn recv(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 512];
    let (n, from) = s.recv_from(&mut buf).ok()?;
    Some((buf[..n].to_vec(), from))
}

#[test]
fn dns_queries_reach_the_proxy_and_its_queries_the_server_as_the_client() {
    if !privileged("dns_queries_reach_the_proxy_and_its_queries_the_server_as_the_client") {
        return;
    }
    let (mut lab, _tcp_server, pairs) = lab_with_proxy_port("dn", CLIENT_DNS);
    let client_ns = netns::named(&lab.pods["rd/client"].netns);
    let server_ns = netns::named(&lab.pods["rd/server"].netns);
    let resolvers: Vec<UdpSocket> =
        pairs.iter().map(|(_, s)| udp_in(&server_ns, SocketAddr::new(*s, 53), false, 0)).collect();
    let client = |c_ip: IpAddr| udp_in(&client_ns, SocketAddr::new(c_ip, 0), false, 0);

    // No proxy socket: the query goes nowhere, and is counted.
    let before = unavailable(&mut lab);
    for (i, (c_ip, s_ip)) in pairs.into_iter().enumerate() {
        client(c_ip).send_to(b"query", SocketAddr::new(s_ip, 53)).expect("send");
        assert!(recv(&resolvers[i]).is_none(), "{s_ip}: the resolver got a query with no proxy");
    }
    assert!(unavailable(&mut lab) >= before + 2, "no PROXY_UNAVAILABLE drop counted");

    let proxy = dns_proxy_sockets(&lab);
    for (i, (c_ip, s_ip)) in pairs.into_iter().enumerate() {
        let dst = SocketAddr::new(s_ip, 53);
        let c = client(c_ip);
        // Each datagram of the flow reaches the proxy, with its original
        // destination; none the resolver.
        for n in 0..3u8 {
            c.send_to(&[b'q', n], dst).expect("send");
            let (bytes, from, orig) =
                recv_orig(&proxy[i]).unwrap_or_else(|| panic!("{dst}: the proxy got no query {n}"));
            assert_eq!((bytes.as_slice(), from, orig), (&[b'q', n][..], c.local_addr().expect("addr"), dst));
        }
        assert!(recv(&resolvers[i]).is_none(), "{dst}: the resolver saw a query past the proxy");

        // The proxy asks the resolver as the client, marked; the answer
        // comes back to the proxy's socket, not to the client.
        let up = udp_in(&lab.node.path(), SocketAddr::new(c_ip, 0), true, FROM_PROXY_MARK);
        up.connect(dst).expect("connect upstream");
        up.send(b"forwarded").expect("send upstream");
        let (bytes, from) = recv(&resolvers[i]).unwrap_or_else(|| panic!("{dst}: the resolver got nothing"));
        assert_eq!(
            (bytes.as_slice(), from.ip().to_canonical()),
            (&b"forwarded"[..], c_ip),
            "the resolver sees the client"
        );
        resolvers[i].send_to(b"answer", from).expect("answer");
        let (bytes, _) = recv(&up).unwrap_or_else(|| panic!("{dst}: the answer did not come back to the proxy"));
        assert_eq!(bytes, b"answer");
        assert!(recv(&c).is_none(), "{dst}: the resolver's answer to the proxy reached the client");

        // The proxy answers the client as the resolver.
        let reply = udp_in(&lab.node.path(), dst, true, 0);
        reply.send_to(b"relayed", c.local_addr().expect("addr")).expect("reply");
        let (bytes, from) = recv(&c).unwrap_or_else(|| panic!("{dst}: the client got no answer"));
        assert_eq!((bytes.as_slice(), from), (&b"relayed"[..], dst), "the answer comes from the resolver's address");
    }

    // The proxy's sockets close: queries go nowhere again.
    drop(proxy);
    let before = unavailable(&mut lab);
    for (i, (c_ip, s_ip)) in pairs.into_iter().enumerate() {
        client(c_ip).send_to(b"query", SocketAddr::new(s_ip, 53)).expect("send");
        assert!(recv(&resolvers[i]).is_none(), "{s_ip}: the resolver got a query after the proxy died");
    }
    assert!(unavailable(&mut lab) >= before + 2, "no PROXY_UNAVAILABLE drop after the proxy died");
}

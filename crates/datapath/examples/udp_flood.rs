//! Load generator for the flow benchmark (`scripts/bench-flows.sh`): sends
//! UDP datagrams at a steady rate, each to a different (source port,
//! destination port) pair, so that every one is a new flow for the
//! datapath. Run it inside a lab pod (`bulkhead lab exec POD -- …`); it
//! only ever sends to the address it is given (a lab pod).
//!
//! Usage: udp_flood DST_IP RATE_PER_SECOND SECONDS [SOCKETS]
//! Prints one JSON line: {"sent": N, "errors": N, "seconds": S}.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: udp_flood DST_IP RATE_PER_SECOND SECONDS [SOCKETS]");
        std::process::exit(2)
    };
    let dst: IpAddr = args.get(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| usage());
    let rate: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or_else(|| usage());
    let seconds: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or_else(|| usage());
    let sockets: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(4);
    let any: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let socks: Vec<UdpSocket> = (0..sockets).map(|_| UdpSocket::bind(any).expect("bind a UDP socket")).collect();
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let (mut sent, mut errors) = (0u64, 0u64);
    let mut i: u64 = 0;
    let payload = [0u8; 16];
    // Each millisecond, catch up to `rate` per second since the start.
    while Instant::now() < end {
        let due = rate * u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX) / 1_000_000;
        while sent + errors < due {
            let sock = &socks[(i % sockets as u64) as usize];
            let port = 1024 + ((i / sockets as u64) % 64_000) as u16;
            match sock.send_to(&payload, SocketAddr::new(dst, port)) {
                Ok(_) => sent += 1,
                Err(_) => errors += 1,
            }
            i += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    println!(r#"{{"sent": {sent}, "errors": {errors}, "seconds": {:.3}}}"#, start.elapsed().as_secs_f64());
}

//! The L7 proxy's events as flows: a thread that subscribes on the proxy's
//! control socket, converts each request and response it reports with the
//! newest published snapshot, and publishes them beside the kernel's
//! (`observe --type l7`, the HTTP metrics, the flow log).
//!
//! A proxy that is not there (yet, or again) is looked for every 200 ms;
//! what it reported while no agent listened is not replayed (it counts it).

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bulkhead_proxy::control::Subscribe;
use bulkhead_proxy::events::{L7Event, Lost};

use super::Observer;
use super::convert::Converter;
use crate::snapshot::Published;

/// How often a missing proxy is looked for, and `stop` checked.
const POLL: Duration = Duration::from_millis(200);

/// Runs until `stop` is set.
pub fn run_subscriber(control: &Path, published: &Published, observer: &Observer, stop: &AtomicBool, node: String) {
    if let Err(e) = bulkhead_datapath::sched::background_this_thread() {
        tracing::warn!(error = %e, "the L7 flow thread keeps its priority");
    }
    let mut conv = Converter::new(node);
    while !stop.load(Ordering::Relaxed) {
        match subscribe(control) {
            Ok(reader) => {
                tracing::info!(control = %control.display(), "receiving the L7 proxy's events");
                if let Err(e) = follow(reader, published, observer, stop, &mut conv) {
                    tracing::warn!(error = %e, "the L7 proxy's events stopped; looking for it again");
                }
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

fn subscribe(control: &Path) -> std::io::Result<BufReader<UnixStream>> {
    let mut s = UnixStream::connect(control)?;
    let mut line = serde_json::to_vec(&Subscribe { subscribe: "l7".into() }).map_err(std::io::Error::other)?;
    line.push(b'\n');
    s.write_all(&line)?;
    s.set_read_timeout(Some(POLL))?;
    Ok(BufReader::new(s))
}

/// One line of the stream: an event becomes a flow; a count of events the
/// proxy could not deliver is counted as lost.
fn take(
    line: &[u8],
    snapshot: &crate::snapshot::Snapshot,
    conv: &mut Converter,
    observer: &Observer,
    flows: &mut Vec<bulkhead_flow::model::Flow>,
) -> std::io::Result<()> {
    if let Ok(event) = serde_json::from_slice::<L7Event>(line) {
        if let Some(d) = event.dns.as_ref().filter(|d| !d.held.is_empty()) {
            observer.metrics().dns_held(&d.held, d.held_ns);
        }
        flows.push(conv.convert_l7(snapshot, &event));
        return Ok(());
    }
    let lost: Lost = serde_json::from_slice(line).map_err(std::io::Error::other)?;
    observer.count_l7_lost(lost.lost);
    Ok(())
}

fn follow(
    mut reader: BufReader<UnixStream>,
    published: &Published,
    observer: &Observer,
    stop: &AtomicBool,
    conv: &mut Converter,
) -> std::io::Result<()> {
    let mut line = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // A read timeout may leave part of a line in `line`: the next read
        // appends the rest.
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the proxy went away")),
            Ok(_) if line.ends_with(b"\n") => {
                let snapshot = published.load();
                let mut flows = Vec::new();
                take(&line, &snapshot, conv, observer, &mut flows)?;
                line.clear();
                // Whatever else is already buffered goes in the same batch.
                while reader.buffer().contains(&b'\n') {
                    reader.read_until(b'\n', &mut line)?;
                    take(&line, &snapshot, conv, observer, &mut flows)?;
                    line.clear();
                }
                observer.publish(flows);
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

//! The signed flow log on disk: a writer thread that appends every flow to
//! segment files in a directory, checkpoints and signs on a timer, rotates
//! by size and applies retention by age and total size. The record format
//! and the verifier are `bulkhead_flow::log`; this module owns the files.
//!
//! Durability: flows are written as soon as the queue runs dry (a process
//! crash loses at most what was still queued, and a record cut mid-write
//! is reported by `flows verify`, not taken for tampering); files are
//! fsynced at each checkpoint. The `HEAD` file is replaced atomically
//! (write, fsync, rename). Retention first signs a head that names the new
//! oldest segment, then deletes, so a crash in between never looks like
//! tampering.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bulkhead_flow::log::{Head, LogImage, Position, Writer};
use bulkhead_flow::model::Flow;
use ed25519_dalek::SigningKey;

/// Where and how the log is kept.
#[derive(Debug, Clone)]
pub struct FlowLogConfig {
    /// The directory.
    pub dir: PathBuf,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Oldest segments are deleted while all of them exceed this.
    pub max_bytes: u64,
    /// Segments last written longer ago than this are deleted.
    pub max_age: Duration,
    /// How often the chain is signed (and files fsynced).
    pub checkpoint_every: Duration,
}

/// What the writer reports.
#[derive(Debug, Default)]
pub struct FlowLogStats {
    /// Flow records written since the agent started.
    pub written: AtomicU64,
    /// The newest checkpoint's sequence number.
    pub checkpoint_seq: AtomicU64,
    /// The current segment.
    pub segment: AtomicU64,
    /// The last write error, if any.
    pub error: Mutex<Option<String>>,
}

/// The file holding the signing key's seed.
pub fn key_path(state_dir: &Path) -> PathBuf {
    state_dir.join("flowlog.key")
}

/// Loads the signing key, creating it (mode 0600) on first start.
pub fn load_or_create_key(state_dir: &Path) -> std::io::Result<SigningKey> {
    let path = key_path(state_dir);
    match std::fs::read(&path) {
        Ok(b) => {
            let seed: [u8; 32] = b.try_into().map_err(|_| {
                std::io::Error::other(format!(
                    "{}: not a 32-byte ed25519 key seed; move it away to make a new key",
                    path.display()
                ))
            })?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            File::open("/dev/urandom")?.read_exact(&mut seed)?;
            crate::store::write_atomically(&path, &seed)?;
            tracing::info!(file = %path.display(), "created the flow log's signing key");
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) => Err(e),
    }
}

/// `flows-0000000001.log`.
pub fn segment_name(index: u64) -> String {
    format!("flows-{index:010}.log")
}

/// The index a segment file's name gives.
pub fn segment_index(name: &str) -> Option<u64> {
    name.strip_prefix("flows-")?.strip_suffix(".log")?.parse().ok()
}

/// Reads a whole log directory (segments and HEAD) into memory.
pub fn read_log(dir: &Path) -> std::io::Result<LogImage> {
    let segments =
        segments(dir)?.into_iter().map(|(i, p)| std::fs::read(p).map(|b| (i, b))).collect::<std::io::Result<_>>()?;
    let head = match std::fs::read(dir.join("HEAD")) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    Ok(LogImage { segments, head })
}

/// The segment files of a log directory, by index.
pub fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| segment_index(&e.file_name().to_string_lossy()).map(|i| (i, e.path())))
        .collect();
    v.sort();
    Ok(v)
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0))
}

fn write_head(dir: &Path, head: &Head) -> std::io::Result<()> {
    let tmp = dir.join("HEAD.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&head.encode())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("HEAD"))?;
    File::open(dir)?.sync_all()
}

struct Log {
    cfg: FlowLogConfig,
    writer: Writer,
    file: File,
    size: u64,
    buf: Vec<u8>,
    stats: Arc<FlowLogStats>,
}

impl Log {
    fn open(cfg: FlowLogConfig, key: SigningKey, stats: Arc<FlowLogStats>) -> std::io::Result<Self> {
        std::fs::create_dir_all(&cfg.dir)?;
        let existing = segments(&cfg.dir)?;
        let oldest = std::fs::read(cfg.dir.join("HEAD"))
            .ok()
            .and_then(|b| Head::decode(&b).ok())
            .map(|h| h.oldest_segment)
            .or_else(|| existing.first().map(|(i, _)| *i))
            .unwrap_or(1);
        // Continue after the last whole record (a record cut by a crash is
        // left where it is and its number reused).
        let mut pos = Position::empty();
        pos.oldest_segment = oldest;
        for (index, path) in existing.iter().rev() {
            pos.segment = pos.segment.max(*index);
            if let Some(p) = Position::after(*index, oldest, &std::fs::read(path)?) {
                pos = Position { segment: pos.segment, ..p };
                break;
            }
        }
        let mut writer = Writer::new(key, pos);
        let mut buf = Vec::new();
        let t = now_ns();
        let index = writer.start_segment(t, &mut buf);
        let head = writer.checkpoint(t, &mut buf);
        let file =
            OpenOptions::new().create_new(true).append(true).mode(0o600).open(cfg.dir.join(segment_name(index)))?;
        let mut log = Log { cfg, writer, file, size: 0, buf, stats };
        log.flush()?;
        log.sync(&head)?;
        Ok(log)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all(&self.buf)?;
            self.size += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    fn sync(&mut self, head: &Head) -> std::io::Result<()> {
        self.file.sync_data()?;
        write_head(&self.cfg.dir, head)?;
        self.stats.checkpoint_seq.store(head.seq, Ordering::Relaxed);
        self.stats.segment.store(head.segment, Ordering::Relaxed);
        Ok(())
    }

    fn append(&mut self, f: &Flow) {
        self.writer.append(f, &mut self.buf);
        self.stats.written.fetch_add(1, Ordering::Relaxed);
    }

    fn checkpoint(&mut self) -> std::io::Result<()> {
        let head = self.writer.checkpoint(now_ns(), &mut self.buf);
        self.flush()?;
        self.sync(&head)
    }

    /// After a write: a new segment when this one is full, then retention.
    fn rotate_if_full(&mut self) -> std::io::Result<()> {
        if self.size < self.cfg.segment_bytes {
            return Ok(());
        }
        self.checkpoint()?;
        let t = now_ns();
        let index = self.writer.start_segment(t, &mut self.buf);
        self.file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(self.cfg.dir.join(segment_name(index)))?;
        self.size = 0;
        self.checkpoint()?;
        self.retain()
    }

    fn retain(&mut self) -> std::io::Result<()> {
        let segs = segments(&self.cfg.dir)?;
        let current = self.writer.segment();
        let mut total: u64 = segs.iter().filter_map(|(_, p)| p.metadata().ok()).map(|m| m.len()).sum();
        let mut doomed = Vec::new();
        for (index, path) in &segs {
            if *index >= current {
                break;
            }
            let meta = path.metadata()?;
            let old = meta.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age > self.cfg.max_age);
            if total <= self.cfg.max_bytes && !old {
                break;
            }
            total = total.saturating_sub(meta.len());
            doomed.push((*index, path.clone()));
        }
        let Some((last, _)) = doomed.last() else { return Ok(()) };
        // Sign the new oldest segment first: a crash before the deletions
        // leaves extra old segments, never a head that misses some.
        self.writer.set_oldest_segment(last + 1);
        self.checkpoint()?;
        for (index, path) in &doomed {
            std::fs::remove_file(path)?;
            tracing::info!(segment = index, "flow log retention removed a segment");
        }
        Ok(())
    }

    fn close(mut self) -> std::io::Result<()> {
        let head = self.writer.close(now_ns(), &mut self.buf);
        self.flush()?;
        self.sync(&head)
    }
}

/// Starts the writer thread; it runs until every sender of `rx` is gone,
/// then closes the log with a final checkpoint.
pub fn start(
    cfg: FlowLogConfig,
    key: SigningKey,
    rx: Receiver<Arc<Flow>>,
    stats: Arc<FlowLogStats>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let log = Log::open(cfg, key, Arc::clone(&stats))?;
    std::thread::Builder::new().name("flowlog".into()).spawn(move || {
        // Behind enforcement; a full queue is counted as lost.
        if let Err(e) = bulkhead_datapath::sched::background_this_thread() {
            tracing::warn!(error = %e, "the flow log thread keeps its priority");
        }
        if let Err(e) = run(log, &rx) {
            tracing::error!(error = %e, "the flow log stopped");
            *stats.error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
        }
    })
}

fn run(mut log: Log, rx: &Receiver<Arc<Flow>>) -> std::io::Result<()> {
    let mut next_checkpoint = Instant::now() + log.cfg.checkpoint_every;
    loop {
        let wait = next_checkpoint.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(f) => {
                log.append(&f);
                // Everything queued goes out in one write.
                while let Ok(f) = rx.try_recv() {
                    log.append(&f);
                    if log.buf.len() >= 1 << 20 {
                        break;
                    }
                }
                log.flush()?;
                log.rotate_if_full()?;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return log.close(),
        }
        if Instant::now() >= next_checkpoint {
            if log.writer.since_checkpoint() > 0 {
                log.checkpoint()?;
            }
            next_checkpoint = Instant::now() + log.cfg.checkpoint_every;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_flow::model::Verdict;

    fn check(dir: &Path, key: &SigningKey) -> bulkhead_flow::log::Report {
        read_log(dir).expect("read the log").verify(Some(&key.verifying_key()))
    }

    #[test]
    fn writes_rotates_retains_and_resumes() {
        let tmp = std::env::temp_dir().join(format!("bh-flowlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).expect("tmp");
        let key = load_or_create_key(&tmp).expect("key");
        assert_eq!(load_or_create_key(&tmp).expect("same key").to_bytes(), key.to_bytes());
        let cfg = FlowLogConfig {
            dir: tmp.join("flows"),
            segment_bytes: 4096,
            max_bytes: 12 * 1024,
            max_age: Duration::from_secs(3600),
            checkpoint_every: Duration::from_millis(20),
        };
        for round in 0..2 {
            let (tx, rx) = std::sync::mpsc::sync_channel(1024);
            let stats = Arc::new(FlowLogStats::default());
            let h = start(cfg.clone(), key.clone(), rx, stats).expect("start");
            for i in 0..300 {
                let f =
                    Flow { verdict: if i % 2 == 0 { Verdict::Forwarded } else { Verdict::Dropped }, ..Flow::default() };
                tx.send(Arc::new(f)).expect("send");
            }
            drop(tx);
            h.join().expect("writer");
            let r = check(&cfg.dir, &key);
            assert!(r.ok(), "round {round}: {:?}", r.problem);
            assert_eq!(r.unsigned_tail, 0);
            let total: u64 = segments(&cfg.dir).expect("s").iter().map(|(_, p)| p.metadata().expect("m").len()).sum();
            assert!(total <= cfg.max_bytes + cfg.segment_bytes + 1024, "retention: {total} bytes");
        }
        let _ = std::fs::remove_dir_all(&tmp);
    }
}

//! The agent's durable state: the objects applied to it, the endpoints the
//! CNI plugin registered, and the audit settings, in one JSON file under
//! the state directory.
//!
//! Every change goes through [`Store::update`]: it is made on a copy, the
//! copy is written to a temporary file, synced, and renamed over the old
//! one (then the directory is synced), and only then does it replace the
//! state in memory. A crash at any point leaves either the old state or the
//! new one on disk, and a failed write leaves memory as it was. The
//! trade-off is a whole-file rewrite per change, which is cheap at the
//! sizes one node holds (thousands of objects) and needs no database.
//! An exclusive lock on `agent.lock` keeps a second agent off the same
//! directory.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bulkhead_policy::api::Object;
use bulkhead_policy::repository::PolicyId;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use bulkhead_api::{AuditSettings, EndpointRequest};

/// What can go wrong with the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The state file is not what this agent writes.
    #[error("{path}: not a bulkhead state file ({message}); move it away to start empty, or restore it from a backup")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// Another agent holds the directory.
    #[error(
        "{path}: another agent is using this state directory (pid {pid}); stop it first or pass another --state-dir"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The pid written in it.
        pid: String,
    },
}

/// Identifies a stored object, as `kubectl` names them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKey {
    /// A policy.
    Policy(PolicyId),
    /// A namespace.
    Namespace(String),
    /// A pod, `namespace/name`.
    Pod(String),
}

impl ObjectKey {
    /// The key of an object.
    pub fn of(o: &Object) -> Self {
        match o {
            Object::Policy(p) => Self::Policy(PolicyId::of(p)),
            Object::Namespace(n) => Self::Namespace(n.name.clone()),
            Object::Pod(p) => Self::Pod(p.key()),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Policy(id) => match &id.namespace {
                Some(ns) => write!(f, "{} {ns}/{}", id.kind, id.name),
                None => write!(f, "{} {}", id.kind, id.name),
            },
            Self::Namespace(n) => write!(f, "Namespace {n}"),
            Self::Pod(k) => write!(f, "Pod {k}"),
        }
    }
}

/// A registered endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// The agent's endpoint id (never reused).
    pub id: u32,
    /// What the CNI plugin registered.
    pub request: EndpointRequest,
}

impl EndpointRecord {
    /// `namespace/pod`.
    pub fn pod_key(&self) -> String {
        format!("{}/{}", self.request.namespace, self.request.pod)
    }
}

/// The state file's format version.
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    objects: Vec<Object>,
    endpoints: Vec<EndpointRecord>,
    audit: AuditSettings,
    next_endpoint_id: u32,
}

/// What the agent keeps.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Applied objects.
    pub objects: BTreeMap<ObjectKey, Object>,
    /// Endpoints by container id.
    pub endpoints: BTreeMap<String, EndpointRecord>,
    /// Audit settings.
    pub audit: AuditSettings,
    next_endpoint_id: u32,
}

impl State {
    /// A new endpoint id (never reused).
    pub fn allocate_endpoint_id(&mut self) -> u32 {
        let id = self.next_endpoint_id.max(1);
        self.next_endpoint_id = id.saturating_add(1);
        id
    }
}

/// The state and where it is saved; reads go through `Deref`, changes
/// through [`Store::update`].
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    _lock: Flock<File>,
    state: State,
}

impl std::ops::Deref for Store {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

impl Store {
    /// Opens (creating if needed) the state under `dir`, taking its lock.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        private_dir(dir)?;
        let lock = lock(&dir.join("agent.lock"))?;
        let path = dir.join("state.json");
        let mut store = Store { path, _lock: lock, state: State::default() };
        let bytes = match std::fs::read(&store.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(store),
            Err(e) => return Err(io_err(&store.path)(e)),
        };
        let disk: OnDisk = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt { path: store.path.clone(), message: e.to_string() })?;
        if disk.version != VERSION {
            return Err(StoreError::Corrupt {
                path: store.path.clone(),
                message: format!("format version {} (this agent reads {VERSION})", disk.version),
            });
        }
        store.state = State {
            objects: disk.objects.into_iter().map(|o| (ObjectKey::of(&o), o)).collect(),
            endpoints: disk.endpoints.into_iter().map(|e| (e.request.container_id.clone(), e)).collect(),
            audit: disk.audit,
            next_endpoint_id: disk.next_endpoint_id,
        };
        Ok(store)
    }

    /// Makes a change durably: `f` changes a copy, the copy is saved, and
    /// only then does it become the state. Returns what `f` returned.
    pub fn update<T>(&mut self, f: impl FnOnce(&mut State) -> T) -> Result<T, StoreError> {
        let mut next = self.state.clone();
        let out = f(&mut next);
        self.save(&next)?;
        self.state = next;
        Ok(out)
    }

    fn save(&self, state: &State) -> Result<(), StoreError> {
        let disk = OnDisk {
            version: VERSION,
            objects: state.objects.values().cloned().collect(),
            endpoints: state.endpoints.values().cloned().collect(),
            audit: state.audit.clone(),
            next_endpoint_id: state.next_endpoint_id,
        };
        let bytes = serde_json::to_vec(&disk)
            .map_err(|e| StoreError::Corrupt { path: self.path.clone(), message: e.to_string() })?;
        write_atomically(&self.path, &bytes).map_err(io_err(&self.path))
    }
}

/// Replaces `path` with `bytes` so that a crash at any point leaves either
/// the old file or the new one, readable by the owner only: a temporary
/// file (mode 0600) is written and synced, renamed over `path`, and the
/// directory synced. For the state file and for keys.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// Makes sure `dir` is a directory only its owner can change: created with
/// mode 0700 when missing; when it exists, it must belong to this user and
/// be writable by nobody else. An existing directory's mode is never
/// changed: it may be shared with something the agent does not know about.
fn private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            std::fs::DirBuilder::new().mode(0o700).create(dir).map_err(io_err(dir))
        }
        Err(e) => Err(io_err(dir)(e)),
        Ok(m) if !m.is_dir() => Err(io_err(dir)(io::Error::other("not a directory"))),
        Ok(m) if m.uid() != nix::unistd::Uid::effective().as_raw() => Err(io_err(dir)(io::Error::other(format!(
            "owned by uid {}, not by the agent's user: use a directory of the agent's own (--state-dir)",
            m.uid()
        )))),
        Ok(m) if m.mode() & 0o022 != 0 => Err(io_err(dir)(io::Error::other(format!(
            "mode {:o} lets others change the agent's state: chmod go-w it, or pass a directory of the agent's own (--state-dir)",
            m.mode() & 0o7777
        )))),
        Ok(_) => Ok(()),
    }
}

/// Takes an exclusive lock on `path` (held until the guard drops) and
/// writes our pid into it.
fn lock(path: &Path) -> Result<Flock<File>, StoreError> {
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io_err(path))?;
    let mut held = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(held) => held,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let pid = std::fs::read_to_string(path).unwrap_or_default().trim().to_string();
            return Err(StoreError::Locked { path: path.to_owned(), pid });
        }
        Err((_, e)) => return Err(io_err(path)(e.into())),
    };
    held.set_len(0).map_err(io_err(path))?;
    write!(held, "{}", std::process::id()).map_err(io_err(path))?;
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bulkhead-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_new_state_directory_is_private_and_an_existing_one_is_not_chmodded() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempdir("perm");
        {
            let mut s = Store::open(&dir).expect("open");
            s.update(|st| st.audit.global = true).expect("save");
        }
        assert_eq!(std::fs::metadata(&dir).expect("dir").mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(dir.join("state.json")).expect("state").mode() & 0o777, 0o600);
        // An existing directory that others may write to is refused, and left as it was.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = Store::open(&dir).expect_err("others can write it");
        assert!(e.to_string().contains("mode 777 lets others change the agent's state"), "{e}");
        assert_eq!(std::fs::metadata(&dir).expect("dir").mode() & 0o777, 0o777, "not chmodded");
        // One that others can only read is used as it is.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(Store::open(&dir).expect("open").audit.global);
        assert_eq!(std::fs::metadata(&dir).expect("dir").mode() & 0o777, 0o755, "not chmodded");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn saves_and_reloads_everything() {
        let dir = tempdir("reload");
        {
            let mut s = Store::open(&dir).expect("open");
            s.update(|st| {
                let ns = bulkhead_policy::api::Namespace { name: "prod".into(), labels: BTreeMap::new() };
                st.objects.insert(ObjectKey::Namespace("prod".into()), Object::Namespace(ns));
                let id = st.allocate_endpoint_id();
                let request = EndpointRequest {
                    container_id: "c1".into(),
                    namespace: "prod".into(),
                    pod: "web".into(),
                    netns: "/run/netns/x".into(),
                    ifname: "eth0".into(),
                    host_if: "veth1".into(),
                    host_ifindex: 7,
                    ips: vec!["198.18.0.5".parse().expect("ip")],
                };
                st.endpoints.insert("c1".into(), EndpointRecord { id, request });
                st.audit.global = true;
            })
            .expect("save");
        }
        let mut s = Store::open(&dir).expect("reopen");
        assert_eq!(s.objects.len(), 1);
        assert_eq!(s.endpoints["c1"].request.host_ifindex, 7);
        assert!(s.audit.global);
        assert_eq!(s.update(State::allocate_endpoint_id).expect("save"), 2, "ids are never reused");
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempdir("failed");
        let mut s = Store::open(&dir).expect("open");
        // A directory where the temporary file must go: the write fails.
        std::fs::create_dir_all(dir.join("state.json.tmp")).expect("block the temp file");
        let r = s.update(|st| st.audit.global = true);
        assert!(r.is_err());
        assert!(!s.audit.global, "memory keeps the old state");
        std::fs::remove_dir(dir.join("state.json.tmp")).expect("unblock");
        s.update(|st| st.audit.global = true).expect("save");
        assert!(s.audit.global);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_second_agent_is_refused_and_corrupt_state_is_not_discarded() {
        let dir = tempdir("lock");
        let first = Store::open(&dir).expect("open");
        let err = Store::open(&dir).expect_err("locked");
        assert!(err.to_string().contains("another agent"), "{err}");
        drop(first);
        std::fs::write(dir.join("state.json"), b"{not json").expect("write");
        let err = Store::open(&dir).expect_err("corrupt");
        assert!(err.to_string().contains("not a bulkhead state file"), "{err}");
        assert_eq!(std::fs::read(dir.join("state.json")).expect("still there"), b"{not json");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

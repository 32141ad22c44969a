//! The guard: BPF LSM programs (`bpf/guard.c`) that, while the agent runs,
//! refuse every other process a writable descriptor of the datapath's maps,
//! any descriptor of its programs, and any descriptor of its links (by id,
//! or by opening a link pin) — what changing a policy entry, replacing a
//! program or detaching one takes. Reading the maps stays open to every
//! root tool. Each refusal is reported ([`Guard::refusals`]) with the
//! process.
//!
//! The guard's links are held by the agent, not pinned: when the agent
//! exits, protection ends with it (a new agent loads its own; a pinned
//! guard would refuse the new agent, whose process it cannot know). Where
//! the kernel has no BPF LSM ([`lsm_available`]) or refuses its programs
//! (the 6.18 kernels of bulkhead's CI machines answer EPERM to loading any
//! BTF-attached program, LSM or fentry, even an empty one),
//! [`Guard::protect`] answers [`GuardError::Unavailable`] with the reason
//! and the agent runs unprotected, saying so.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use aya::maps::{Array, HashMap, MapData, MapInfo, RingBuf};
use aya::programs::Lsm;
use aya::programs::links::FdLink;
use aya::{Btf, Ebpf, EbpfLoader};

use crate::Datapath;

/// The guard's programs (`bpf/guard.c`).
static GUARD_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard.o"));

/// Key kinds of `bh_guard_ids` (as `guard.c` names them).
const ID_MAP: u32 = 1;
const ID_PROG: u32 = 2;
const ID_LINK: u32 = 3;

/// The pin prefix's room in `bh_guard_pins` (`PIN_PREFIX_MAX`).
const PIN_PREFIX_MAX: usize = 128;

/// The hooks, with the program attached to each.
const HOOKS: [(&str, &str); 3] = [("bh_guard_map", "bpf_map"), ("bh_guard_prog", "bpf_prog"), ("bh_guard_bpf", "bpf")];

/// `struct guard_id`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GuardId {
    kind: u32,
    id: u32,
}

// SAFETY: two u32 fields, no padding (asserted); any bit pattern is valid.
#[expect(unsafe_code, reason = "aya::Pod marks types that may be copied to and from maps")]
unsafe impl aya::Pod for GuardId {}
const _: () = assert!(size_of::<GuardId>() == 8);

/// `struct pin_prefix`.
#[repr(C)]
#[derive(Clone, Copy)]
struct PinPrefix {
    path: [u8; PIN_PREFIX_MAX],
}

// SAFETY: a byte array; any bit pattern is valid.
#[expect(unsafe_code, reason = "aya::Pod marks types that may be copied to and from maps")]
unsafe impl aya::Pod for PinPrefix {}

/// Why the guard could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The kernel has no BPF LSM (not built in, or not in `lsm=`).
    #[error("BPF LSM is not available: {0}")]
    Unavailable(String),
    /// Loading or attaching failed.
    #[error("{what}: {why}")]
    Failed {
        /// What was being done.
        what: String,
        /// The kernel's or aya's answer.
        why: String,
    },
}

fn failed(what: impl Into<String>) -> impl FnOnce(String) -> GuardError {
    let what = what.into();
    move |why| GuardError::Failed { what, why }
}

/// What a refused attempt was after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tampered {
    /// A map, for writing.
    Map,
    /// A program.
    Program,
    /// A link (to detach a program, or replace it).
    Link,
}

impl Tampered {
    /// As metrics and logs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Map => "map",
            Self::Program => "program",
            Self::Link => "link",
        }
    }
}

/// One refused attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The process (thread group).
    pub pid: u32,
    /// Its user.
    pub uid: u32,
    /// Its command name.
    pub comm: String,
    /// What it was after.
    pub object: Tampered,
    /// The object's id (0: a link pin, by path).
    pub id: u32,
}

/// Whether the kernel runs BPF LSM programs: `bpf` in its active LSM list
/// (`/sys/kernel/security/lsm`; securityfs is mounted if it is not).
pub fn lsm_available() -> Result<(), String> {
    let list = Path::new("/sys/kernel/security/lsm");
    if !list.exists() {
        let _ = nix::mount::mount(
            Some("securityfs"),
            "/sys/kernel/security",
            Some("securityfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    let active = std::fs::read_to_string(list).map_err(|e| format!("reading {}: {e}", list.display()))?;
    if active.trim().split(',').any(|m| m == "bpf") {
        Ok(())
    } else {
        Err(format!(
            "the kernel's active LSMs are `{}`: boot with `lsm={},bpf` to protect the pins",
            active.trim(),
            active.trim()
        ))
    }
}

/// The guard in force; dropping it lifts the protection.
pub struct Guard {
    /// Holds the programs.
    _ebpf: Ebpf,
    /// The programs' attachments (dropping one detaches it).
    _links: Vec<FdLink>,
    _allowed: HashMap<MapData, u32, u8>,
    _pins: Array<MapData, PinPrefix>,
    ids: HashMap<MapData, GuardId, u8>,
    events: RingBuf<MapData>,
}

/// A guard map's kernel id.
fn map_id(ebpf: &Ebpf, name: &str) -> Result<u32, GuardError> {
    use aya::maps::Map;
    let data = match ebpf.map(name) {
        Some(Map::HashMap(d) | Map::Array(d) | Map::RingBuf(d)) => d,
        _ => return Err(failed(format!("the guard's map {name}"))("missing".into())),
    };
    data.info().map(|i| i.id()).map_err(|e| failed(format!("the guard's map {name}"))(e.to_string()))
}

impl Guard {
    /// Protects `dp`'s maps, programs and link pins (and the guard's own)
    /// from every process but those in `allowed` (thread-group ids).
    pub fn protect(dp: &Datapath, allowed: &[u32]) -> Result<Self, GuardError> {
        lsm_available().map_err(GuardError::Unavailable)?;
        let btf = Btf::from_sys_fs().map_err(|e| failed("reading the kernel's BTF")(e.to_string()))?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .load(GUARD_OBJECT)
            .map_err(|e| failed("loading bpf/guard.c")(e.to_string()))?;
        let names = ["bh_guard_allowed", "bh_guard_pins", "bh_guard_ids", "bh_guard_events"];
        let own_maps = names.iter().map(|n| map_id(&ebpf, n)).collect::<Result<Vec<u32>, _>>()?;
        let mut take =
            |name: &str| ebpf.take_map(name).ok_or_else(|| failed(format!("the guard's map {name}"))("missing".into()));
        let mut allowed_map: HashMap<MapData, u32, u8> =
            HashMap::try_from(take(names[0])?).map_err(|e| failed(names[0])(e.to_string()))?;
        let mut pins: Array<MapData, PinPrefix> =
            Array::try_from(take(names[1])?).map_err(|e| failed(names[1])(e.to_string()))?;
        let ids = HashMap::try_from(take(names[2])?).map_err(|e| failed(names[2])(e.to_string()))?;
        let events = RingBuf::try_from(take(names[3])?).map_err(|e| failed(names[3])(e.to_string()))?;
        for tgid in allowed {
            allowed_map.insert(tgid, 1, 0).map_err(|e| failed("allowing the agent")(e.to_string()))?;
        }
        let links_dir = format!("{}/", dp.pin_dir().join("links").display());
        if links_dir.len() >= PIN_PREFIX_MAX {
            return Err(failed("the pin directory")(format!(
                "{links_dir} is longer than {} bytes",
                PIN_PREFIX_MAX - 1
            )));
        }
        let mut prefix = PinPrefix { path: [0; PIN_PREFIX_MAX] };
        prefix.path[..links_dir.len()].copy_from_slice(links_dir.as_bytes());
        pins.set(0, prefix, 0).map_err(|e| failed("bh_guard_pins")(e.to_string()))?;
        let mut guard = Self { _ebpf: ebpf, _links: Vec::new(), _allowed: allowed_map, _pins: pins, ids, events };

        // The datapath's objects: every pinned map, the programs, the links;
        // and the guard's own maps, so that it cannot be emptied either.
        for e in std::fs::read_dir(dp.pin_dir()).map_err(|e| failed("reading the pins")(e.to_string()))? {
            let path = e.map_err(|e| failed("reading the pins")(e.to_string()))?.path();
            if path.is_file() {
                let info =
                    MapInfo::from_pin(&path).map_err(|e| failed(format!("{}", path.display()))(e.to_string()))?;
                guard.add(ID_MAP, info.id())?;
            }
        }
        for id in own_maps {
            guard.add(ID_MAP, id)?;
        }
        for id in dp.view().program_ids() {
            guard.add(ID_PROG, id)?;
        }
        guard.protect_links(&dp.link_ids())?;
        // Attached last: until here nothing is refused, the agent included.
        for (prog, hook) in HOOKS {
            let p: &mut Lsm = guard
                ._ebpf
                .program_mut(prog)
                .ok_or_else(|| failed(prog)("missing".into()))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| failed(prog)(e.to_string()))?;
            // A kernel may list `bpf` among its LSMs yet refuse the programs
            // (a lockdown or sandbox policy on BTF-attached programs): the
            // guard is then unavailable, as without BPF LSM.
            p.load(hook, &btf).map_err(|e| match &e {
                aya::programs::ProgramError::LoadError { io_error, .. }
                    if io_error.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    GuardError::Unavailable(format!(
                        "the kernel lists bpf among its LSMs but refuses to load a BPF LSM program ({io_error}), as \
                         root with CAP_BPF and CAP_MAC_ADMIN"
                    ))
                }
                _ => failed(format!("loading {prog} (hook {hook})"))(e.to_string()),
            })?;
            let prog_id = p.info().map_err(|e| failed(prog)(e.to_string()))?.id();
            let link = p.attach().map_err(|e| failed(format!("attaching {prog} to {hook}"))(e.to_string()))?;
            let link = FdLink::from(p.take_link(link).map_err(|e| failed(prog)(e.to_string()))?);
            let link_id = link.info().map_err(|e| failed(prog)(e.to_string()))?.id();
            guard._links.push(link);
            guard.add(ID_PROG, prog_id)?;
            guard.add(ID_LINK, link_id)?;
        }
        Ok(guard)
    }

    fn add(&mut self, kind: u32, id: u32) -> Result<(), GuardError> {
        self.ids.insert(GuardId { kind, id }, 1, 0).map_err(|e| failed("bh_guard_ids")(e.to_string()))
    }

    /// Protects links the datapath pinned since (new endpoints).
    pub fn protect_links(&mut self, ids: &[u32]) -> Result<(), GuardError> {
        for id in ids {
            self.add(ID_LINK, *id)?;
        }
        Ok(())
    }

    /// The attempts refused since the last call.
    pub fn refusals(&mut self) -> Vec<Refusal> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            if let Some(r) = decode(&item) {
                out.push(r);
            }
        }
        out
    }

    /// The refusal ring buffer's descriptor, to wait on with `poll(2)`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }
}

/// `struct bh_guard_event`: time (8), pid, uid, object, id, cmd, pad (4 each), comm (16).
fn decode(b: &[u8]) -> Option<Refusal> {
    if b.len() < 48 {
        return None;
    }
    let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let object = match u32_at(16) {
        1 => Tampered::Map,
        2 => Tampered::Program,
        3 => Tampered::Link,
        _ => return None,
    };
    let comm = &b[32..48];
    let end = comm.iter().position(|c| *c == 0).unwrap_or(comm.len());
    Some(Refusal {
        pid: u32_at(8),
        uid: u32_at(12),
        comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
        object,
        id: u32_at(20),
    })
}

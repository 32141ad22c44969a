//! Numeric security identities.
//!
//! Same label set, same number: pods with equal identity labels share an
//! identity, and policy is computed per identity. Reserved identities keep
//! Cilium's numbers; cluster identities are allocated from 256; CIDR and FQDN
//! identities are node-local, with the scope bit `1 << 24` set. Allocation is
//! a trait so that a shared allocator (agents on several nodes) can replace
//! the in-memory one without touching the engine.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;
use crate::labels::{LabelSet, Source};

/// A numeric identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NumericIdentity(pub u32);

impl fmt::Display for NumericIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Reserved identities, with Cilium's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reserved {
    /// 0: not known.
    Unknown = 0,
    /// 1: the local node.
    Host = 1,
    /// 2: outside the cluster (single-stack form).
    World = 2,
    /// 3: pods the agent does not manage.
    Unmanaged = 3,
    /// 4: health endpoints.
    Health = 4,
    /// 5: endpoints whose identity is not resolved yet.
    Init = 5,
    /// 6: other nodes.
    RemoteNode = 6,
    /// 7: the Kubernetes API server.
    KubeApiserver = 7,
    /// 8: the ingress proxy.
    Ingress = 8,
    /// 9: IPv4 outside the cluster.
    WorldIpv4 = 9,
    /// 10: IPv6 outside the cluster.
    WorldIpv6 = 10,
}

impl Reserved {
    /// Every reserved identity.
    pub const ALL: [Reserved; 11] = [
        Reserved::Unknown,
        Reserved::Host,
        Reserved::World,
        Reserved::Unmanaged,
        Reserved::Health,
        Reserved::Init,
        Reserved::RemoteNode,
        Reserved::KubeApiserver,
        Reserved::Ingress,
        Reserved::WorldIpv4,
        Reserved::WorldIpv6,
    ];

    /// The `reserved:` label name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Host => "host",
            Self::World => "world",
            Self::Unmanaged => "unmanaged",
            Self::Health => "health",
            Self::Init => "init",
            Self::RemoteNode => "remote-node",
            Self::KubeApiserver => "kube-apiserver",
            Self::Ingress => "ingress",
            Self::WorldIpv4 => "world-ipv4",
            Self::WorldIpv6 => "world-ipv6",
        }
    }

    /// The numeric identity.
    pub fn id(self) -> NumericIdentity {
        NumericIdentity(self as u32)
    }

    /// The labels of this identity. The world identities also carry
    /// `reserved:world`, so that `world` selects both families.
    pub fn labels(self) -> LabelSet {
        let mut l = LabelSet::reserved(self.name());
        if matches!(self, Self::WorldIpv4 | Self::WorldIpv6) {
            l.insert(Source::Reserved, "world", "");
        }
        l
    }
}

/// First cluster-scope identity.
pub const MIN_CLUSTER_IDENTITY: u32 = 256;
/// Last cluster-scope identity.
pub const MAX_CLUSTER_IDENTITY: u32 = 65535;
/// Scope bit of node-local identities (CIDR, FQDN).
pub const LOCAL_SCOPE: u32 = 1 << 24;

/// What an identity stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityKind {
    /// A reserved identity.
    Reserved(Reserved),
    /// Pods with these labels.
    Cluster,
    /// Addresses outside the cluster whose longest matching policy prefix is this.
    Cidr(Cidr),
    /// Addresses learnt from DNS answers (node-local): the names they were
    /// learnt under, and the policy prefixes that contain them (with their
    /// family's `/0`; none for a name's identity that no address has yet,
    /// `policy trace --to-fqdn`'s), so that CIDR rules still see them.
    Fqdn {
        /// The names, lowercased with their trailing dot.
        names: Vec<String>,
        /// The policy prefixes containing the addresses.
        cidrs: Vec<Cidr>,
    },
}

/// An identity: its number, labels and kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The number.
    pub id: NumericIdentity,
    /// Its labels.
    pub labels: LabelSet,
    /// What it stands for.
    pub kind: IdentityKind,
}

impl Identity {
    /// The reserved identity `r`.
    pub fn reserved(r: Reserved) -> Self {
        Self { id: r.id(), labels: r.labels(), kind: IdentityKind::Reserved(r) }
    }

    /// True for identities outside the cluster (world, CIDR, FQDN).
    pub fn is_world(&self) -> bool {
        match &self.kind {
            IdentityKind::Reserved(r) => matches!(r, Reserved::World | Reserved::WorldIpv4 | Reserved::WorldIpv6),
            IdentityKind::Cidr(_) | IdentityKind::Fqdn { .. } => true,
            IdentityKind::Cluster => false,
        }
    }
}

/// Why an identity could not be allocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The scope's numbers are used up.
    #[error("no free identity left in the {0} scope")]
    Exhausted(&'static str),
}

/// Hands out numbers for label sets: the same set always gets the same number
/// while it is in use.
pub trait Allocator {
    /// The number for a cluster-scope label set (pods).
    fn allocate(&mut self, labels: &LabelSet) -> Result<NumericIdentity, AllocError>;
    /// The number for a node-local label set (CIDR, FQDN).
    fn allocate_local(&mut self, labels: &LabelSet) -> Result<NumericIdentity, AllocError>;
    /// Drops a reference; the number may be reused once unused.
    fn release(&mut self, id: NumericIdentity);
}

/// An in-process allocator with reference counts.
#[derive(Debug, Default)]
pub struct MemoryAllocator {
    by_labels: HashMap<LabelSet, (NumericIdentity, usize)>,
    by_id: HashMap<NumericIdentity, LabelSet>,
    next_cluster: u32,
    next_local: u32,
    free_cluster: Vec<u32>,
    free_local: Vec<u32>,
}

impl MemoryAllocator {
    /// An empty allocator.
    pub fn new() -> Self {
        Self { next_cluster: MIN_CLUSTER_IDENTITY, next_local: LOCAL_SCOPE + 1, ..Self::default() }
    }

    fn alloc(&mut self, labels: &LabelSet, local: bool) -> Result<NumericIdentity, AllocError> {
        if let Some((id, refs)) = self.by_labels.get_mut(labels) {
            *refs += 1;
            return Ok(*id);
        }
        let n = if local {
            match self.free_local.pop() {
                Some(n) => n,
                None if self.next_local < LOCAL_SCOPE * 2 => {
                    self.next_local += 1;
                    self.next_local - 1
                }
                None => return Err(AllocError::Exhausted("node-local")),
            }
        } else {
            match self.free_cluster.pop() {
                Some(n) => n,
                None if self.next_cluster <= MAX_CLUSTER_IDENTITY => {
                    self.next_cluster += 1;
                    self.next_cluster - 1
                }
                None => return Err(AllocError::Exhausted("cluster")),
            }
        };
        let id = NumericIdentity(n);
        self.by_labels.insert(labels.clone(), (id, 1));
        self.by_id.insert(id, labels.clone());
        Ok(id)
    }
}

impl Allocator for MemoryAllocator {
    fn allocate(&mut self, labels: &LabelSet) -> Result<NumericIdentity, AllocError> {
        self.alloc(labels, false)
    }

    fn allocate_local(&mut self, labels: &LabelSet) -> Result<NumericIdentity, AllocError> {
        self.alloc(labels, true)
    }

    fn release(&mut self, id: NumericIdentity) {
        let Some(labels) = self.by_id.get(&id).cloned() else { return };
        let Some((_, refs)) = self.by_labels.get_mut(&labels) else { return };
        *refs -= 1;
        if *refs == 0 {
            self.by_labels.remove(&labels);
            self.by_id.remove(&id);
            if id.0 & LOCAL_SCOPE != 0 {
                self.free_local.push(id.0);
            } else {
                self.free_cluster.push(id.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_labels_same_number() {
        let mut a = MemoryAllocator::new();
        let mut l = LabelSet::new();
        l.insert(Source::K8s, "app", "web");
        let x = a.allocate(&l).expect("free ids");
        let y = a.allocate(&l).expect("free ids");
        assert_eq!(x, y);
        assert_eq!(x.0, MIN_CLUSTER_IDENTITY);
        let mut m = LabelSet::new();
        m.insert(Source::K8s, "app", "db");
        assert_ne!(a.allocate(&m).expect("free ids"), x);
    }

    #[test]
    fn local_scope_bit() {
        let mut a = MemoryAllocator::new();
        let id = a.allocate_local(&LabelSet::reserved("x")).expect("free ids");
        assert_ne!(id.0 & LOCAL_SCOPE, 0);
    }

    #[test]
    fn release_frees_after_last_reference() {
        let mut a = MemoryAllocator::new();
        let l = LabelSet::reserved("x");
        let id = a.allocate(&l).expect("free ids");
        a.allocate(&l).expect("free ids");
        a.release(id);
        assert_eq!(a.allocate(&l).expect("free ids"), id);
        a.release(id);
        a.release(id);
        let other = a.allocate(&LabelSet::reserved("y")).expect("free ids");
        assert_eq!(other, id, "freed number is reused");
    }

    #[test]
    fn reserved_numbers_are_ciliums() {
        assert_eq!(Reserved::Host.id().0, 1);
        assert_eq!(Reserved::World.id().0, 2);
        assert_eq!(Reserved::KubeApiserver.id().0, 7);
        assert_eq!(Reserved::WorldIpv6.id().0, 10);
    }
}

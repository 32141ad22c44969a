//! bulkhead's test bed: network-namespace pods wired through a CNI chain
//! exactly as a container runtime wires them ([`pods`]), real probes and
//! raw frames between them ([`probe`]), and the responders that serve a lab
//! pod's container ports ([`respond`]).
//!
//! Used by `bulkhead lab` and by the privileged tests; never by the agent,
//! which is why it is not part of the datapath crate. Its raw-socket code
//! needs `unsafe` (socket2 has no safe constructor for a link-layer
//! address); each block carries a `// SAFETY:` note.

pub mod frame;
pub mod pods;
pub mod probe;
pub mod respond;

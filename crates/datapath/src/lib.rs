//! bulkhead's kernel datapath: the eBPF programs of `bpf/`, compiled at
//! build time, loaded with aya, attached with TCX to the host side of each
//! pod's veth, and fed from the policy engine.
//!
//! Everything the programs use is pinned under one directory per layout
//! version (`/sys/fs/bpf/bulkhead/v1` by default), so enforcement outlives
//! the agent and a new agent adopts what the old one left: see [`Datapath`].
//! [`sync::PolicySync`] turns engine output into map writes, per endpoint
//! atomically. Linux only; the one crate with `unsafe`.

pub mod abi;
pub mod events;
pub mod guard;
mod maps;
pub mod netns;
pub mod sched;
pub mod sync;
mod view;

pub use maps::{Counters, Datapath, DatapathError, Direction, Event, LoadedEntry, ProgramStats};
pub use view::DatapathView;

/// The compiled programs (`bpf/bulkhead.c`).
pub(crate) static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bulkhead.o"));

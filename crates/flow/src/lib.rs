//! bulkhead's flow room: the flow model with Hubble's field names
//! ([`model`]), filters with Hubble's semantics ([`filter`], over label
//! selectors from [`selector`]), the bounded ring `observe` reads
//! ([`ring`]), time as flows carry it ([`time`]), the tamper-evident flow
//! log and its verifier ([`log`]) with its binary flow encoding ([`codec`]).
//!
//! Pure: no I/O, no clocks, no threads. The agent turns datapath events
//! into flows and owns files and sockets; the CLI renders and filters.

pub mod codec;
pub mod filter;
pub mod log;
pub mod model;
pub mod ring;
pub mod selector;
pub mod time;

pub use filter::{Filters, FlowFilter, Matcher};
pub use model::{Flow, FlowRecord, Verdict};
pub use time::Timestamp;

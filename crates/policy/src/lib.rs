//! bulkhead-policy: what a network policy means.
//!
//! Pure logic, no I/O: parse and validate Cilium and Kubernetes policy
//! ([`api`]), derive identities from labels ([`labels`], [`identity`]), match
//! selectors ([`selector`]), resolve per-endpoint policy maps ([`resolve`],
//! [`engine`]) and explain verdicts ([`trace`], [`reach`]) and find what a policy set does
//! that its author may not mean ([`lint`]). The agent, the
//! datapath and the CLI all run this same code, so that what `policy trace`
//! says is what the kernel does.

pub mod api;
pub mod cidr;
pub mod diag;
pub mod engine;
pub mod identity;
pub mod l7;
pub mod labels;
pub mod lint;
pub mod reach;
pub mod repository;
pub mod resolve;
pub mod selector;
pub mod trace;
pub mod yaml;

#[cfg(test)]
pub(crate) mod testutil;

//! `bulkhead-cni`, the CNI plugin (`bulkhead_cni`). Built here so that it
//! lands beside `bulkhead`, where `lab up` and runtimes' conflists find it;
//! it links only the plugin, the agent's API and its client.

fn main() -> std::process::ExitCode {
    bulkhead_cni::plugin()
}

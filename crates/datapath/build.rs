//! Compiles the C programs in `bpf/` with clang into `$OUT_DIR/bulkhead.o`,
//! which the crate embeds. Needs Debian's clang and libbpf-dev (see README).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let bpf = manifest.join("../../bpf");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("bulkhead.o");
    for f in ["bulkhead.c", "bulkhead.h"] {
        println!("cargo:rerun-if-changed={}", bpf.join(f).display());
    }
    let clang = std::env::var("BPF_CLANG").unwrap_or_else(|_| "clang".into());
    let multiarch = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{multiarch}"))
        .arg("-c")
        .arg(bpf.join("bulkhead.c"))
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to compile bpf/bulkhead.c ({s})"),
        Err(e) => panic!(
            "cannot run {clang} ({e}): the eBPF programs need clang and libbpf headers \
             (Debian: apt-get install -y clang llvm libbpf-dev)"
        ),
    }
}

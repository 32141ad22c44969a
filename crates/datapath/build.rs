//! Compiles the C programs in `bpf/` with clang into `$OUT_DIR/bulkhead.o`,
//! which the crate embeds. Needs Debian's clang and libbpf-dev (see README).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let bpf = manifest.join("../../bpf");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for f in ["bulkhead.c", "bulkhead.h", "guard.c"] {
        println!("cargo:rerun-if-changed={}", bpf.join(f).display());
    }
    let clang = std::env::var("BPF_CLANG").unwrap_or_else(|_| "clang".into());
    let multiarch = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    // bpf_tracing.h's name for the architecture (the guard's BPF_PROG).
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x86",
        "aarch64" => "arm64",
        other => other,
    };
    // The datapath, and the guard's BPF LSM programs (bpf/guard.c).
    for name in ["bulkhead", "guard"] {
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-D__TARGET_ARCH_{arch}"))
            .arg(format!("-I{multiarch}"))
            .arg("-c")
            .arg(bpf.join(format!("{name}.c")))
            .arg("-o")
            .arg(out_dir.join(format!("{name}.o")))
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{clang} failed to compile bpf/{name}.c ({s})"),
            Err(e) => panic!(
                "cannot run {clang} ({e}): the eBPF programs need clang and libbpf headers \
                 (Debian: apt-get install -y clang llvm libbpf-dev)"
            ),
        }
    }
}

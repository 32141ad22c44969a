//! Writes the flow benchmarks' workload (`benches/support/workload.rs`) to
//! DIR: `flows.jsonl` (Hubble's JSON, one record per line) and `log/` (a
//! closed signed flow log), for `scripts/bench-flows.sh` to time the CLI
//! and jq on the same flows.
//!
//! Usage: workload DIR [N]   (N defaults to 200,000)

#[path = "../benches/support/workload.rs"]
mod workload;

use std::io::Write;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let Some(dir) = args.get(1).map(std::path::PathBuf::from) else {
        eprintln!("usage: workload DIR [N]");
        std::process::exit(2);
    };
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let flows = workload::flows(n);
    std::fs::create_dir_all(dir.join("log"))?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("flows.jsonl"))?);
    for f in &flows {
        let rec = bulkhead_flow::FlowRecord { flow: f.clone(), node_name: f.node_name.clone(), time: f.time };
        serde_json::to_writer(&mut out, &rec)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    let (seg, head) = workload::segment(&flows);
    std::fs::write(dir.join("log/flows-0000000001.log"), seg)?;
    std::fs::write(dir.join("log/HEAD"), head.encode())?;
    println!("{n} flows written to {}", dir.display());
    Ok(())
}

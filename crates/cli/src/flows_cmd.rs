//! `bulkhead flows`: the signed flow log's public key, and verification of
//! a log directory (offline; no agent needed).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use bulkhead_agent::observer::flowlog::read_log;
use bulkhead_api::FlowKey;
use bulkhead_flow::log::{Report, parse_public_key};
use clap::{Args, Subcommand, ValueEnum};

use crate::live::{AgentAddr, with_details};

#[derive(Debug, Subcommand)]
pub enum FlowsCommand {
    /// Print the flow log's public key (ed25519, hex) and where the log is.
    ///
    /// Keep the key somewhere the node cannot write: `flows verify --key`
    /// with it proves the log was not rewritten, even by root on the node.
    Key(KeyArgs),
    /// Verify a flow log directory: every record hash-chained to the one
    /// before, every checkpoint signed, the signed HEAD naming the end. Names
    /// the first record that was edited, inserted, deleted, reordered or
    /// truncated away; exit 1 if anything was.
    ///
    /// Example: bulkhead flows verify /var/lib/bulkhead/flows --key $(bulkhead flows key -q)
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Print only the key.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub agent: AgentAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyOutput {
    /// What was checked and what was found, in words.
    Text,
    /// The report as JSON.
    Json,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The log directory (the agent's --flow-log-dir; default STATE_DIR/flows).
    pub dir: PathBuf,
    /// The public key to trust (hex, from `bulkhead flows key`). Without it
    /// the key the log names is used, which catches accidents but not a
    /// forger who re-signs with a key of their own.
    #[arg(long, value_name = "HEX")]
    pub key: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = VerifyOutput::Text)]
    pub output: VerifyOutput,
}

pub fn run(cmd: FlowsCommand) -> Result<ExitCode> {
    match cmd {
        FlowsCommand::Key(a) => {
            let k: FlowKey = a.agent.client().get("/flows/key").map_err(with_details)?;
            if a.quiet {
                println!("{}", k.public_key);
            } else {
                println!("public key: {}\nlog:        {}", k.public_key, k.dir);
            }
            Ok(ExitCode::SUCCESS)
        }
        FlowsCommand::Verify(a) => verify_dir(&a),
    }
}

fn verify_dir(a: &VerifyArgs) -> Result<ExitCode> {
    let key = a
        .key
        .as_deref()
        .map(|k| {
            parse_public_key(k)
                .ok_or_else(|| anyhow::anyhow!("--key: not an ed25519 public key in hex (64 hex digits)"))
        })
        .transpose()?;
    let log = read_log(&a.dir).with_context(|| format!("{}: cannot read the flow log", a.dir.display()))?;
    if log.segments.is_empty() {
        anyhow::bail!("{}: no flow log segments (flows-*.log) here", a.dir.display());
    }
    let report = log.verify(key.as_ref());
    match a.output {
        VerifyOutput::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        VerifyOutput::Text => print!("{}", render(&report, &a.dir)),
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn render(r: &Report, dir: &std::path::Path) -> String {
    let mut s = String::new();
    let verdict = if r.ok() { "intact" } else { "TAMPERED" };
    s.push_str(&format!("{}: {verdict}\n", dir.display()));
    s.push_str(&format!(
        "  {} segment(s), records {}..{} verified ({} flows, {} signed checkpoints)\n",
        r.segments, r.first_seq, r.last_seq, r.flows, r.checkpoints
    ));
    s.push_str(&format!(
        "  key {}{}\n",
        r.key,
        if r.key_given { "" } else { " (named by the log itself: pass --key to trust your copy)" }
    ));
    if let Some(p) = &r.problem {
        s.push_str(&format!("  problem: {p}\n"));
    }
    for seq in &r.incomplete {
        s.push_str(&format!(
            "  note: record {seq} was cut off while being written (the writer stopped); it is lost, the rest verifies\n"
        ));
    }
    if r.unsigned_tail > 0 {
        s.push_str(&format!(
            "  note: the last {} record(s) are chained but not yet signed (the agent is running, or stopped without closing the log)\n",
            r.unsigned_tail
        ));
    }
    s
}

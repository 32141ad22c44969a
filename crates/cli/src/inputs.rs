//! Reading policy and cluster files: paths, directories, `-` for stdin.
//!
//! The only place the CLI touches the file system for inputs; everything it
//! reads is handed to the pure decoder in `bulkhead_policy::api::decode`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bulkhead_policy::api::decode::{DecodeOptions, decode_guardrails, decode_str};
use bulkhead_policy::api::{Guardrails, Object};
use bulkhead_policy::diag::{Diagnostic, Sink};

/// What was read from a set of paths.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Valid objects, in file order.
    pub objects: Vec<Object>,
    /// Every diagnostic, in file order.
    pub diagnostics: Vec<Diagnostic>,
    /// Files read.
    pub files: usize,
}

impl Loaded {
    /// Number of error diagnostics.
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.severity == bulkhead_policy::diag::Severity::Error).count()
    }
}

/// Expands directories (recursively, `.yaml`, `.yml`, `.json`, sorted).
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            out.push(p.clone());
        } else if p.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found).with_context(|| format!("reading directory {}", p.display()))?;
            if found.is_empty() {
                bail!("{}: no .yaml, .yml or .json files in this directory", p.display());
            }
            found.sort();
            out.extend(found);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            bail!("{}: no such file or directory", p.display());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads every file under `paths`: (name for diagnostics, text).
pub fn read(paths: &[PathBuf]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for path in expand(paths)? {
        out.push(if path.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("reading standard input")?;
            ("<stdin>".to_string(), s)
        } else {
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", path.display()))?;
            (path.display().to_string(), text)
        });
    }
    Ok(out)
}

/// Reads and decodes every file under `paths`.
pub fn load(paths: &[PathBuf], opts: &DecodeOptions) -> Result<Loaded> {
    let mut loaded = Loaded::default();
    for (name, text) in read(paths)? {
        let mut sink = Sink::new(&name);
        loaded.objects.extend(decode_str(&text, opts, &mut sink));
        loaded.diagnostics.extend(sink.diagnostics);
        loaded.files += 1;
    }
    Ok(loaded)
}

/// Reads a guardrails file (`bulkhead.io/v1alpha1 Guardrails` objects):
/// them, or every diagnostic as the error.
pub fn load_guardrails(path: &Path) -> Result<Vec<Guardrails>> {
    let mut found = Vec::new();
    for (name, text) in read(&[path.to_path_buf()])? {
        let mut sink = Sink::new(&name);
        found.extend(decode_guardrails(&text, &mut sink));
        if sink.error_count() > 0 {
            let lines: Vec<String> = sink.diagnostics.iter().map(ToString::to_string).collect();
            bail!(
                "{}\n{}: invalid guardrails ({} error(s)): nothing checked",
                lines.join("\n"),
                name,
                sink.error_count()
            );
        }
    }
    if found.is_empty() {
        bail!("{}: no Guardrails in it (write `apiVersion: bulkhead.io/v1alpha1`, `kind: Guardrails`)", path.display());
    }
    Ok(found)
}

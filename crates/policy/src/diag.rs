//! Diagnostics: what is wrong with an input, where, and how to fix it.
//!
//! Every problem the decoders find becomes a [`Diagnostic`] rather than an
//! early return, so that one run reports everything wrong with a file. The
//! file name is attached by whoever read the file; the policy crate does no
//! I/O.

use std::fmt;

use serde::Serialize;

use crate::yaml::Pos;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The object is invalid and is not used.
    Error,
    /// The object is used, but something in it is ignored or suspicious.
    Warning,
}

/// One problem in an input document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file it came from (empty when the input was not a file).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// Field path, e.g. `spec.egress[0].toPorts[0].rules.dns[0].pattern`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// What to write instead, when it is obvious.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = if self.file.is_empty() { "<input>" } else { &self.file };
        write!(f, "{file}:{}:{}: ", self.line, self.col)?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, " (fix: {fix})")?;
        }
        Ok(())
    }
}

/// A field path under construction (`spec.ingress[0].fromEndpoints`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath(String);

impl FieldPath {
    /// The root (empty) path.
    pub fn root() -> Self {
        Self(String::new())
    }

    /// This path with `.name` appended.
    pub fn field(&self, name: &str) -> Self {
        if self.0.is_empty() { Self(name.to_string()) } else { Self(format!("{}.{name}", self.0)) }
    }

    /// This path with `[i]` appended.
    pub fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Collects diagnostics for one file.
#[derive(Debug, Default)]
pub struct Sink {
    file: String,
    /// What was found, in the order found.
    pub diagnostics: Vec<Diagnostic>,
}

impl Sink {
    /// A sink for diagnostics of `file`.
    pub fn new(file: &str) -> Self {
        Self { file: file.to_string(), diagnostics: Vec::new() }
    }

    /// The file name diagnostics are attributed to.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Records an error.
    pub fn error(&mut self, pos: Pos, path: &FieldPath, message: impl Into<String>) {
        self.push(Severity::Error, pos, path, message.into(), None);
    }

    /// Records an error with a suggested fix.
    pub fn error_fix(&mut self, pos: Pos, path: &FieldPath, message: impl Into<String>, fix: impl Into<String>) {
        self.push(Severity::Error, pos, path, message.into(), Some(fix.into()));
    }

    /// Records a warning, with an optional fix.
    pub fn warning(&mut self, pos: Pos, path: &FieldPath, message: impl Into<String>, fix: Option<String>) {
        self.push(Severity::Warning, pos, path, message.into(), fix);
    }

    fn push(&mut self, severity: Severity, pos: Pos, path: &FieldPath, message: String, fix: Option<String>) {
        self.diagnostics.push(Diagnostic {
            severity,
            file: self.file.clone(),
            line: pos.line,
            col: pos.col,
            path: path.as_str().to_string(),
            message,
            fix,
        });
    }

    /// Number of errors recorded so far.
    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error).count()
    }
}

/// The closest candidate to `word` (case-insensitive equality, or an edit
/// distance of at most a third of the word), for "did you mean" hints.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    if let Some(c) = candidates.iter().find(|c| c.to_ascii_lowercase() == lower) {
        return Some(c);
    }
    let limit = (word.len() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(&lower, &c.to_ascii_lowercase()), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_file_line_col_path_fix() {
        let mut sink = Sink::new("p.yaml");
        let path = FieldPath::root().field("spec").field("egress").index(0);
        sink.error_fix(Pos { line: 3, col: 5 }, &path, "bad", "good");
        assert_eq!(sink.diagnostics[0].to_string(), "p.yaml:3:5: spec.egress[0]: bad (fix: good)");
    }

    #[test]
    fn closest_finds_typos_and_case() {
        assert_eq!(closest("apiversion", &["apiVersion", "kind"]), Some("apiVersion"));
        assert_eq!(closest("toEndpoint", &["toEndpoints", "toCIDR"]), Some("toEndpoints"));
        assert_eq!(closest("zzz", &["toEndpoints", "toCIDR"]), None);
    }
}

//! Kubernetes label-selector strings (`app=x,env in (a,b),!debug`) over the
//! labels flows carry (`k8s:app=x`, `reserved:world`), as `hubble observe
//! --label` reads them. A key may name a source (`k8s:app`); without one it
//! matches a label of any source, as Cilium's `any:` does.
//!
//! Written here rather than shared with the policy engine: policies carry
//! selectors as structured YAML (`matchLabels`/`matchExpressions`), never
//! as this string form, so the engine has no parser for it.

/// A selector string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{selector}`: {why} (e.g. `app=frontend,env in (prod,staging),!debug`)")]
pub struct SelectorError {
    /// The selector given.
    pub selector: String,
    /// What is wrong.
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Exists,
    NotExists,
    In(Vec<String>),
    NotIn(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    source: Option<String>,
    key: String,
    op: Op,
}

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

/// Splits at commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | ':'))
}

fn valid_value(v: &str) -> bool {
    v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

impl LabelSelector {
    /// Parses a selector string.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let err = |why: String| SelectorError { selector: s.to_string(), why };
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let part = part.trim();
            if part.is_empty() {
                return Err(err("an empty requirement".into()));
            }
            let (key, op) = if let Some(k) = part.strip_prefix('!') {
                (k.trim(), Op::NotExists)
            } else if let Some((k, v)) = part.split_once("!=") {
                (k.trim(), Op::NotIn(vec![v.trim().to_string()]))
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (k.trim(), Op::In(vec![v.trim().to_string()]))
            } else if let Some((k, set, negate)) = set_op(part) {
                let values: Vec<String> = set.split(',').map(|v| v.trim().to_string()).collect();
                if values.iter().any(String::is_empty) {
                    return Err(err(format!("an empty value in `{part}`")));
                }
                (k, if negate { Op::NotIn(values) } else { Op::In(values) })
            } else {
                (part, Op::Exists)
            };
            if !valid_key(key) {
                return Err(err(format!("`{key}` is not a label key")));
            }
            if let Op::In(v) | Op::NotIn(v) = &op
                && let Some(bad) = v.iter().find(|v| !valid_value(v))
            {
                return Err(err(format!("`{bad}` is not a label value")));
            }
            let (source, key) = match key.split_once(':') {
                Some((src, k)) if !k.is_empty() => (Some(src.to_string()), k.to_string()),
                _ => (None, key.to_string()),
            };
            reqs.push(Requirement { source, key, op });
        }
        Ok(Self(reqs))
    }

    /// Whether labels (`source:key=value` or `source:key`) satisfy it.
    pub fn matches<S: AsRef<str>>(&self, labels: &[S]) -> bool {
        self.0.iter().all(|r| {
            let mut values = labels.iter().filter_map(|l| {
                let l = l.as_ref();
                let (src, rest) = l.split_once(':').unwrap_or(("any", l));
                let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
                (k == r.key && r.source.as_deref().is_none_or(|s| s == "any" || s == src)).then_some(v)
            });
            match &r.op {
                Op::Exists => values.next().is_some(),
                Op::NotExists => values.next().is_none(),
                Op::In(set) => values.any(|v| set.iter().any(|s| s == v)),
                Op::NotIn(set) => values.all(|v| !set.iter().any(|s| s == v)),
            }
        })
    }
}

/// `key in (a,b)` / `key notin (a,b)` → (key, "a,b", negated).
fn set_op(part: &str) -> Option<(&str, &str, bool)> {
    let open = part.find('(')?;
    let inner = part[open + 1..].strip_suffix(')')?;
    let head = part[..open].trim_end();
    if let Some(k) = head.strip_suffix(" notin") {
        return Some((k.trim(), inner, true));
    }
    head.strip_suffix(" in").map(|k| (k.trim(), inner, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABELS: &[&str] = &["k8s:app=frontend", "k8s:env=prod", "reserved:host", "cidr:10.0.0.0/8"];

    #[test]
    fn requirements() {
        let yes = |s: &str| assert!(LabelSelector::parse(s).expect(s).matches(LABELS), "{s} should match");
        let no = |s: &str| assert!(!LabelSelector::parse(s).expect(s).matches(LABELS), "{s} should not match");
        yes("app=frontend");
        yes("k8s:app==frontend");
        yes("any:app=frontend");
        no("reserved:app=frontend");
        yes("app=frontend,env in (prod, staging)");
        no("app=frontend,env notin (prod)");
        yes("env!=staging");
        yes("missing!=x");
        yes("host");
        yes("reserved:host");
        no("!host");
        yes("!debug");
        no("app in (backend,db)");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for bad in ["", "app=,", "app in (a,)", "a b", "app=fr ontend"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} parsed");
        }
        let e = LabelSelector::parse("a b").expect_err("fails").to_string();
        assert!(e.contains("`a b` is not a label key"), "{e}");
    }
}

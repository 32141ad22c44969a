//! DNS name matcher for `toFQDNs[]` and `rules.dns[]` selectors.
//!
//! Owns validation of `matchName`/`matchPattern` (Cilium's CRD syntax and
//! 255-character limit), name normalization, and pattern compilation.
//! Internal form: lowercase with a trailing dot (`www.example.com.`), as
//! Cilium's `dns.FQDN` produces; both selectors and query names are brought
//! to it before comparing. Trade-off: each pattern becomes its own anchored
//! regex, tried in selector order so the first matching index can be
//! reported; one combined regex would be faster but could not say which
//! selector matched. Wildcards follow Cilium 1.19 (`**.` = one or more whole
//! labels), which is wider than 1.17, where `**.` behaved like `*.`.

use super::{L7Error, build_regex};
use crate::api::l7::FqdnSelector;
use regex::Regex;

/// Longest `matchName` or `matchPattern` Cilium accepts.
pub const MAX_FQDN_LEN: usize = 255;

/// One name character, as a regex class (names are lowercased first).
const NAME_CHAR: &str = "[-a-z0-9_]";

/// Regex that every all-star pattern compiles to: any name made of name
/// characters, or the root.
const MATCH_ALL: &str = r"^(?:(?:[-a-z0-9_]+\.)+|\.)$";

/// Regex for a leading `**.`: one or more whole labels.
const LEADING_LABELS: &str = r"[-a-z0-9_]+(?:\.[-a-z0-9_]+)*\.";

/// Checks a `matchName` against Cilium's `^([-a-zA-Z0-9_]+[.]?)+$` and length limit.
pub fn validate_match_name(name: &str) -> Result<(), L7Error> {
    validate(name, "matchName", false)
}

/// Checks a `matchPattern` against Cilium's `^([-a-zA-Z0-9_*]+[.]?)+$` and length limit.
pub fn validate_match_pattern(pattern: &str) -> Result<(), L7Error> {
    validate(pattern, "matchPattern", true)
}

fn validate(s: &str, field: &'static str, star: bool) -> Result<(), L7Error> {
    let err = |reason: String| Err(L7Error::DnsName { field, value: s.to_owned(), reason });
    if s.is_empty() {
        return err("must not be empty".into());
    }
    if s.len() > MAX_FQDN_LEN {
        return err(format!("is {} characters long; at most {MAX_FQDN_LEN} are allowed", s.len()));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || (star && c == '*');
    if let Some((i, c)) = s.char_indices().find(|&(_, c)| !ok(c)) {
        let allowed = if star { "a-z, A-Z, 0-9, '-', '_', '.' and '*'" } else { "a-z, A-Z, 0-9, '-', '_' and '.'" };
        let hint = if c == '*' { " (wildcards belong in matchPattern)" } else { "" };
        return err(format!("character {c:?} at position {i} is not allowed; only {allowed} are{hint}"));
    }
    if s.starts_with('.') {
        return err("must not start with '.'".into());
    }
    if let Some(i) = s.find("..") {
        return err(format!("empty label ('..') at position {i}"));
    }
    Ok(())
}

/// Brings a name to the internal form: trimmed, ASCII-lowercased, with a
/// trailing dot (`""` becomes the root, `"."`).
pub fn normalize_name(name: &str) -> String {
    let mut s = name.trim().to_ascii_lowercase();
    if !s.ends_with('.') {
        s.push('.');
    }
    s
}

/// Translates a `matchPattern` into the anchored regex source it compiles to.
pub fn pattern_regex_source(pattern: &str) -> String {
    let p = normalize_name(pattern);
    let body = &p[..p.len() - 1];
    if !body.is_empty() && body.bytes().all(|b| b == b'*') {
        return MATCH_ALL.to_owned();
    }
    let mut out = String::with_capacity(p.len() * 3 + LEADING_LABELS.len() + 2);
    out.push('^');
    let stars = p.len() - p.trim_start_matches('*').len();
    let mut rest = p.as_str();
    if stars >= 2 && p[stars..].starts_with('.') {
        out.push_str(LEADING_LABELS);
        rest = &p[stars + 1..];
    }
    let mut prev_star = false;
    for c in rest.chars() {
        match c {
            '*' if prev_star => {}
            '*' => {
                out.push_str(NAME_CHAR);
                out.push('*');
            }
            '.' => out.push_str(r"\."),
            c => out.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
        prev_star = c == '*';
    }
    out.push('$');
    out
}

#[derive(Debug, Clone)]
enum NameMatcher {
    Exact(String),
    Pattern(Regex),
}

impl NameMatcher {
    fn compile(sel: &FqdnSelector) -> Result<Self, L7Error> {
        match sel {
            FqdnSelector::MatchName(n) => {
                validate_match_name(n)?;
                Ok(Self::Exact(normalize_name(n)))
            }
            FqdnSelector::MatchPattern(p) => {
                validate_match_pattern(p)?;
                build_regex("matchPattern", p, &pattern_regex_source(p)).map(Self::Pattern)
            }
        }
    }

    fn matches(&self, normalized: &str) -> bool {
        match self {
            Self::Exact(n) => n == normalized,
            Self::Pattern(re) => re.is_match(normalized),
        }
    }
}

/// A compiled list of FQDN selectors.
///
/// An empty list matches no name. For `rules.dns: []` Cilium installs no DNS
/// proxy rules at all (plain L4 allow); callers check [`DnsPolicy::is_empty`].
#[derive(Debug, Clone, Default)]
pub struct DnsPolicy {
    matchers: Vec<NameMatcher>,
}

impl DnsPolicy {
    /// Validates and compiles `selectors`.
    pub fn compile(selectors: &[FqdnSelector]) -> Result<Self, L7Error> {
        let matchers = selectors.iter().map(NameMatcher::compile).collect::<Result<_, _>>()?;
        Ok(Self { matchers })
    }

    /// Index of the first selector matching `qname` (any case, trailing dot optional).
    pub fn allows(&self, qname: &str) -> Option<usize> {
        let name = normalize_name(qname);
        self.matchers.iter().position(|m| m.matches(&name))
    }

    /// Number of selectors.
    pub fn len(&self) -> usize {
        self.matchers.len()
    }

    /// Whether there are no selectors.
    pub fn is_empty(&self) -> bool {
        self.matchers.is_empty()
    }
}

/// Whether one selector matches `name`, compiling it on the spot; an invalid
/// selector matches nothing. Use [`DnsPolicy`] for repeated checks.
pub fn selector_matches(sel: &FqdnSelector, name: &str) -> bool {
    NameMatcher::compile(sel).is_ok_and(|m| m.matches(&normalize_name(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pat(p: &str) -> FqdnSelector {
        FqdnSelector::MatchPattern(p.into())
    }

    fn check(p: &str, accept: &[&str], reject: &[&str]) {
        for n in accept {
            assert!(selector_matches(&pat(p), n), "{p} should match {n}");
        }
        for n in reject {
            assert!(!selector_matches(&pat(p), n), "{p} should not match {n}");
        }
    }

    #[test]
    fn validation_follows_cilium_syntax() {
        for ok in ["example.com", "example.com.", "_sip._tcp.Example.COM", "a", "x-1.y_2"] {
            assert!(validate_match_name(ok).is_ok(), "{ok}");
            assert!(validate_match_pattern(ok).is_ok(), "{ok}");
        }
        for ok in ["*", "**", "*.", "**.example.com", "sub*.example.*", "*.*.io"] {
            assert!(validate_match_pattern(ok).is_ok(), "{ok}");
        }
        let msg = |r: Result<(), L7Error>| r.expect_err("invalid").to_string();
        assert!(msg(validate_match_name("")).contains("empty"));
        assert!(msg(validate_match_name("*.example.com")).contains("wildcards belong in matchPattern"));
        assert!(msg(validate_match_name("a b.com")).contains("' ' at position 1"));
        assert!(msg(validate_match_pattern(".example.com")).contains("start with '.'"));
        assert!(msg(validate_match_pattern("a..b")).contains("'..'"));
        assert!(msg(validate_match_pattern("a.[b]")).contains("'['"));
        let long = "a".repeat(256);
        assert!(msg(validate_match_name(&long)).contains("256 characters"));
        assert!(validate_match_name(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn match_name_is_exact_case_insensitive_fqdn() {
        let sel = FqdnSelector::MatchName("Api.Example.com".into());
        for n in ["api.example.com", "API.EXAMPLE.COM.", " api.example.com "] {
            assert!(selector_matches(&sel, n), "{n}");
        }
        for n in ["www.api.example.com", "api.example.co", "apiXexample.com", "api.example.com.."] {
            assert!(!selector_matches(&sel, n), "{n}");
        }
        assert!(!selector_matches(&FqdnSelector::MatchName("bad name".into()), "bad name"));
    }

    #[test]
    fn single_star_stays_within_one_label() {
        check(
            "*.cilium.io",
            &["www.cilium.io", "Blog.Cilium.IO."],
            &["cilium.io", "a.b.cilium.io", "cilium.io.evil.com"],
        );
        check("*cilium.io", &["cilium.io", "mycilium.io"], &["www.cilium.io", "ciliumXio"]);
        check("sub*.cilium.io", &["sub.cilium.io", "subdomain.cilium.io"], &["www.cilium.io", "cilium.io"]);
        check("*.ci*.io", &["anysub.cilium.io", "anysub.ci.io"], &["cilium.io", "a.b.ci.io"]);
        check("*.*.cilium.io", &["_foobar._tcp.cilium.io"], &["x.cilium.io"]);
        check("a**b.com", &["ab.com", "axyb.com"], &["a.b.com"]);
        check("a.**.com", &["a.b.com"], &["a.b.c.com"]);
    }

    #[test]
    fn leading_double_star_spans_whole_labels() {
        check(
            "**.cilium.io",
            &["www.cilium.io", "a.b.c.cilium.io", "_x._tcp.cilium.io."],
            &["cilium.io", "wwwcilium.io", ".cilium.io", "a..cilium.io", "cilium.io.com"],
        );
        check("***.cilium.io.", &["a.b.cilium.io"], &["cilium.io"]);
        check("**.*.io", &["a.b.io", "a.b.c.io"], &["b.io"]);
    }

    #[test]
    fn all_star_patterns_match_every_name() {
        for p in ["*", "**", "*.", "***."] {
            check(p, &["io", "cilium.io.", "a.b.c.d", "_srv._tcp.x", ".", ""], &[".io", "a..b", "bad name.com"]);
        }
    }

    #[test]
    fn policy_reports_first_matching_selector() {
        let p = DnsPolicy::compile(&[
            FqdnSelector::MatchName("api.example.com".into()),
            pat("*.example.com"),
            pat("**.example.com"),
        ])
        .expect("valid selectors");
        assert_eq!(p.allows("API.example.com."), Some(0));
        assert_eq!(p.allows("www.example.com"), Some(1));
        assert_eq!(p.allows("a.b.example.com"), Some(2));
        assert_eq!(p.allows("example.com"), None);
        assert_eq!(p.len(), 3);
        let empty = DnsPolicy::compile(&[]).expect("empty compiles");
        assert!(empty.is_empty() && empty.allows("example.com").is_none());
        let bad = DnsPolicy::compile(&[pat("ok.com"), pat("no way")]);
        assert!(matches!(bad, Err(L7Error::DnsName { field: "matchPattern", .. })));
    }

    fn cilium_name_re(star: bool) -> Regex {
        let class = if star { "[-a-zA-Z0-9_*]" } else { "[-a-zA-Z0-9_]" };
        Regex::new(&format!("^({class}+[.]?)+$")).expect("reference regex")
    }

    proptest! {
        #[test]
        fn validators_agree_with_cilium_regexes(s in "[-a-zA-Z0-9_.* ]{0,20}") {
            prop_assert_eq!(validate_match_name(&s).is_ok(), cilium_name_re(false).is_match(&s));
            prop_assert_eq!(validate_match_pattern(&s).is_ok(), cilium_name_re(true).is_match(&s));
        }

        #[test]
        fn normalize_is_idempotent(s in "[-a-zA-Z0-9_.]{0,20}") {
            let once = normalize_name(&s);
            prop_assert_eq!(normalize_name(&once), once.clone());
            prop_assert!(once.ends_with('.'));
        }

        #[test]
        fn starless_pattern_equals_match_name(p in "[a-z0-9]{1,4}(\\.[a-zA-Z0-9]{1,4}){0,2}", n in "[a-z0-9]{1,4}(\\.[a-zA-Z0-9]{1,4}){0,2}") {
            let by_pattern = selector_matches(&pat(&p), &n);
            prop_assert_eq!(by_pattern, selector_matches(&FqdnSelector::MatchName(p.clone()), &n));
            prop_assert_eq!(by_pattern, normalize_name(&p) == normalize_name(&n));
        }

        #[test]
        fn leading_double_star_means_strict_subdomain(labels in proptest::collection::vec("[a-z0-9_-]{1,5}", 1..4), base in "[a-z]{1,5}\\.[a-z]{2,3}") {
            let name = format!("{}.{base}", labels.join("."));
            let sel = pat(&format!("**.{base}"));
            prop_assert!(selector_matches(&sel, &name));
            prop_assert!(!selector_matches(&sel, &base));
        }
    }
}

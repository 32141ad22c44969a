//! HTTP matcher: compiles `rules.http[]` once and decides requests as
//! Cilium's Envoy filter does.
//!
//! Owns the anchored, size-limited regexes for `method`/`path`/`host`, the
//! parsing of `headers` entries, and `headerMatches` with their mismatch
//! actions. Trade-off: we model the verdict, not Envoy's side effects. Header
//! actions are reported, not applied, and every rule sees the request as
//! given (Envoy lets an earlier rule's ADD/REPLACE/DELETE change what later
//! rules see). Secrets are never resolved; a `headerMatches` entry naming a
//! secret is judged as Cilium does when the secret is missing (`value` is
//! used, or the rule cannot match when it is empty), and the decision says so.
//! Rust's `regex` is RE2-like but not RE2, so rare patterns may differ.

use super::{L7Error, build_regex};
use crate::api::l7::{HttpRule, MismatchAction};
use regex::Regex;

/// Compiles `pattern` to match a whole value (`^(?:pattern)$`) under the
/// size limit; errors name `field`.
///
/// The pattern is also built on its own first, so text such as `a)|(b` cannot
/// close the wrapper group and escape the anchors.
pub fn compile_regex(field: &str, pattern: &str) -> Result<Regex, L7Error> {
    build_regex(field, pattern, pattern)?;
    build_regex(field, pattern, &format!("^(?:{pattern})$"))
}

/// One HTTP request as the proxy sees it.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    /// The request method, e.g. `GET`.
    pub method: &'a str,
    /// The request target, query string included (Envoy's `:path`), in the
    /// normal form of [`super::path::normalize_target`]: the form the proxy
    /// forwards, so that a rule decides exactly what the server receives.
    pub path: &'a str,
    /// The Host / `:authority` value as sent.
    pub host: &'a str,
    /// The other request headers as `(name, value)`; names are case-insensitive
    /// and repeated names are joined with `,` before comparing, as Envoy does.
    pub headers: &'a [(&'a str, &'a str)],
}

/// A header change (or log line) a matching rule asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderAction {
    /// Index of the rule that carried the `headerMatches` entry.
    pub rule: usize,
    /// What the proxy does: log, add, delete or replace the header.
    pub action: MismatchAction,
    /// The header name as written in the rule.
    pub name: String,
    /// The expected value (empty for a presence match).
    pub expected: String,
    /// The value the request carried, if the header was present.
    pub found: Option<String>,
}

/// What a `headerMatches` action does to the header it names, in what
/// is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderEdit<'a> {
    /// Append this value (a header already there stays): ADD.
    Append(&'a str),
    /// Remove every value: DELETE.
    Remove,
    /// Remove every value and set this one: REPLACE.
    Set(&'a str),
}

impl HeaderAction {
    /// The change the action makes, as Cilium's filter makes it to the
    /// request it forwards; `None` for LOG. Whether a name may be
    /// rewritten at all is the caller's.
    pub fn edit(&self) -> Option<HeaderEdit<'_>> {
        match self.action {
            MismatchAction::Log => None,
            MismatchAction::Add => Some(HeaderEdit::Append(&self.expected)),
            MismatchAction::Delete => Some(HeaderEdit::Remove),
            MismatchAction::Replace => Some(HeaderEdit::Set(&self.expected)),
        }
    }

    /// Applies [`Self::edit`] to `headers` (names lowercased).
    pub fn apply<V: for<'v> From<&'v str>>(&self, headers: &mut Vec<(String, V)>) {
        let Some(edit) = self.edit() else { return };
        let name = self.name.to_ascii_lowercase();
        match edit {
            HeaderEdit::Append(v) => headers.push((name, v.into())),
            HeaderEdit::Remove => headers.retain(|(k, _)| *k != name),
            HeaderEdit::Set(v) => {
                headers.retain(|(k, _)| *k != name);
                headers.push((name, v.into()));
            }
        }
    }
}

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpDecision {
    /// Whether the request may pass.
    pub allowed: bool,
    /// The first rule (in policy order) that matched; `None` when denied or
    /// when the policy has no rules (allow-all).
    pub matched_rule: Option<usize>,
    /// Actions from every matching rule's `headerMatches` with a mismatch action.
    pub header_actions: Vec<HeaderAction>,
    /// Whether a consulted rule compares against a secret that was not resolved.
    pub secret_unresolved: bool,
}

/// A parsed `headers[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSpec {
    /// Header name, lowercased.
    pub name: String,
    /// Exact value required, or `None` for "present".
    pub value: Option<String>,
}

/// Checks that `name` is an HTTP token, optionally with a leading `:` for
/// pseudo-headers such as `:method`.
pub fn validate_header_name(name: &str) -> Result<(), L7Error> {
    header_name_problem(name).map_or(Ok(()), |reason| Err(L7Error::Header { spec: name.to_owned(), reason }))
}

/// Checks that `value` can be sent as a header value (RFC 9110 §5.5: no
/// CR, LF, NUL or other control character but HTAB), as a `headerMatches`
/// value an ADD or REPLACE writes into requests must.
pub fn validate_header_value(value: &str) -> Result<(), L7Error> {
    match value.chars().find(|c| c.is_control() && *c != '\t') {
        Some(c) => Err(L7Error::Header {
            spec: value.to_owned(),
            reason: format!("character {c:?} is not allowed in a header value"),
        }),
        None => Ok(()),
    }
}

fn header_name_problem(name: &str) -> Option<String> {
    let bare = name.strip_prefix(':').unwrap_or(name);
    if bare.is_empty() {
        return Some("header name is empty".into());
    }
    let bad = |c: &char| !(c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(*c));
    (bare.chars().find(bad)).map(|c| format!("character {c:?} is not allowed in a header name"))
}

/// Parses a `headers[]` entry: `Name` (present), `Name: value` or Cilium's
/// `Name value` form (exact value, surrounding whitespace trimmed). An empty
/// value means "present", as in Envoy.
pub fn parse_header_spec(spec: &str) -> Result<HeaderSpec, L7Error> {
    let s = spec.trim();
    let skip = usize::from(s.starts_with(':'));
    let split = (s[skip..].find(':').or_else(|| s[skip..].find([' ', '\t']))).map(|i| i + skip);
    let (name, value) = match split {
        Some(i) => (s[..i].trim_end(), Some(s[i + 1..].trim())),
        None => (s, None),
    };
    if let Some(reason) = header_name_problem(name) {
        return Err(L7Error::Header { spec: spec.to_owned(), reason });
    }
    Ok(HeaderSpec { name: name.to_ascii_lowercase(), value: value.filter(|v| !v.is_empty()).map(str::to_owned) })
}

/// A `headerMatches` entry with a mismatch action.
#[derive(Debug, Clone)]
struct ActionMatch {
    name: String,
    lower: String,
    value: String,
    action: MismatchAction,
}

#[derive(Debug, Clone, Default)]
struct CompiledRule {
    method: Option<Regex>,
    path: Option<Regex>,
    host: Option<Regex>,
    required: Vec<HeaderSpec>,
    actions: Vec<ActionMatch>,
    uses_secret: bool,
    never_matches: bool,
}

/// A compiled `rules.http[]` list.
#[derive(Debug, Clone, Default)]
pub struct HttpPolicy {
    rules: Vec<CompiledRule>,
    has_actions: bool,
}

impl HttpPolicy {
    /// Compiles `rules`; an empty list allows every request (Cilium installs
    /// no HTTP rules for it).
    pub fn compile(rules: &[HttpRule]) -> Result<Self, L7Error> {
        let mut out = Vec::with_capacity(rules.len());
        for rule in rules {
            out.push(compile_rule(rule)?);
        }
        let has_actions = out.iter().any(|r| !r.actions.is_empty());
        Ok(Self { rules: out, has_actions })
    }

    /// A policy that allows every request.
    pub fn allow_all() -> Self {
        Self::default()
    }

    /// Number of compiled rules (zero for allow-all).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the policy has no rules, i.e. allows everything.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Decides `req`: allowed when any rule matches. With no header actions
    /// in the policy the first match wins; otherwise every matching rule is
    /// evaluated and its actions reported, as Envoy does.
    pub fn decide(&self, req: &HttpRequest<'_>) -> HttpDecision {
        let mut d = HttpDecision {
            allowed: self.rules.is_empty(),
            matched_rule: None,
            header_actions: Vec::new(),
            secret_unresolved: false,
        };
        for (i, rule) in self.rules.iter().enumerate() {
            d.secret_unresolved |= rule.uses_secret;
            if !rule.matches(req) {
                continue;
            }
            if d.matched_rule.is_none() {
                d.allowed = true;
                d.matched_rule = Some(i);
            }
            if !self.has_actions {
                break;
            }
            rule.collect_actions(i, req, &mut d.header_actions);
        }
        d
    }
}

fn compile_rule(rule: &HttpRule) -> Result<CompiledRule, L7Error> {
    let re = |field: &str, p: &Option<String>| -> Result<Option<Regex>, L7Error> {
        match p.as_deref() {
            Some(p) if !p.is_empty() => compile_regex(field, p).map(Some),
            _ => Ok(None),
        }
    };
    let mut out = CompiledRule {
        method: re("method", &rule.method)?,
        path: re("path", &rule.path)?,
        host: re("host", &rule.host)?,
        ..CompiledRule::default()
    };
    for spec in &rule.headers {
        out.required.push(parse_header_spec(spec)?);
    }
    for hm in &rule.header_matches {
        validate_header_name(&hm.name)?;
        validate_header_value(&hm.value)?;
        if hm.secret.is_some() {
            out.uses_secret = true;
            if hm.value.is_empty() {
                out.never_matches = true;
            }
        }
        let lower = hm.name.to_ascii_lowercase();
        match hm.mismatch {
            None => {
                out.required.push(HeaderSpec { name: lower, value: Some(hm.value.clone()).filter(|v| !v.is_empty()) })
            }
            Some(action) => {
                out.actions.push(ActionMatch { name: hm.name.clone(), lower, value: hm.value.clone(), action })
            }
        }
    }
    Ok(out)
}

/// The request's value for `lower` (already lowercased), joining repeats
/// with `,`; pseudo-headers come from the request line.
fn header_value(req: &HttpRequest<'_>, lower: &str) -> Option<String> {
    match lower {
        ":method" => return Some(req.method.to_owned()),
        ":path" => return Some(req.path.to_owned()),
        ":authority" => return Some(req.host.to_owned()),
        _ => {}
    }
    let mut values =
        req.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(lower)).map(|(_, v)| v.trim_matches([' ', '\t']));
    let first = values.next()?;
    Some(values.fold(first.to_owned(), |acc, v| acc + "," + v))
}

impl CompiledRule {
    fn matches(&self, req: &HttpRequest<'_>) -> bool {
        let re_ok = |re: &Option<Regex>, v: &str| re.as_ref().is_none_or(|re| re.is_match(v));
        !self.never_matches
            && re_ok(&self.method, req.method)
            && re_ok(&self.path, req.path)
            && re_ok(&self.host, req.host)
            && self
                .required
                .iter()
                .all(|h| header_value(req, &h.name).is_some_and(|f| h.value.as_ref().is_none_or(|w| f == *w)))
    }

    fn collect_actions(&self, rule: usize, req: &HttpRequest<'_>, out: &mut Vec<HeaderAction>) {
        for m in &self.actions {
            let found = header_value(req, &m.lower);
            let matched = (found.as_ref()).is_some_and(|v| m.value.is_empty() || *v == m.value);
            // DELETE has nothing to do for a failed presence match or an absent header.
            let idle = m.action == MismatchAction::Delete && (m.value.is_empty() || found.is_none());
            if !matched && !idle {
                out.push(HeaderAction {
                    rule,
                    action: m.action,
                    name: m.name.clone(),
                    expected: m.value.clone(),
                    found,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::l7::HeaderMatch;
    use proptest::prelude::*;

    fn req<'a>(method: &'a str, path: &'a str, headers: &'a [(&'a str, &'a str)]) -> HttpRequest<'a> {
        HttpRequest { method, path, host: "api.example.com", headers }
    }

    fn policy(rules: &[HttpRule]) -> HttpPolicy {
        HttpPolicy::compile(rules).expect("test rules compile")
    }

    fn ok(p: &HttpPolicy, method: &str, path: &str, headers: &[(&str, &str)]) -> bool {
        p.decide(&req(method, path, headers)).allowed
    }

    fn headers(specs: &[&str]) -> HttpRule {
        let headers = specs.iter().map(|s| s.to_string()).collect();
        HttpRule { headers, ..Default::default() }
    }

    fn rule(method: &str, path: &str) -> HttpRule {
        HttpRule { method: Some(method.into()), path: Some(path.into()), ..Default::default() }
    }

    fn hm(name: &str, value: &str, mismatch: Option<MismatchAction>) -> HeaderMatch {
        HeaderMatch { name: name.into(), value: value.into(), mismatch, secret: None }
    }

    #[test]
    fn regexes_are_anchored_on_the_whole_value() {
        let p = policy(&[rule("GET", "/public/.*")]);
        assert!(ok(&p, "GET", "/public/a", &[]));
        assert!(!ok(&p, "GET", "/x/public/a", &[]));
        assert!(!ok(&p, "GETS", "/public/a", &[]));
        assert!(!ok(&p, "get", "/public/a", &[]), "methods are case-sensitive");
        // The query string is part of :path, as in Envoy.
        let exact = policy(&[rule("GET", "/health")]);
        assert!(!ok(&exact, "GET", "/health?x=1", &[]));
        let alternation = policy(&[rule("GET|HEAD", "/a")]);
        assert!(ok(&alternation, "HEAD", "/a", &[]));
        assert!(!ok(&alternation, "GETX", "/a", &[]));
    }

    #[test]
    fn fields_and_and_rules_or() {
        let p = policy(&[
            rule("GET", "/a"),
            HttpRule { host: Some(r"api\.example\.com".into()), method: Some("POST".into()), ..Default::default() },
        ]);
        let d = p.decide(&req("GET", "/a", &[]));
        assert_eq!((d.allowed, d.matched_rule), (true, Some(0)));
        let d = p.decide(&req("POST", "/anything", &[]));
        assert_eq!((d.allowed, d.matched_rule), (true, Some(1)));
        let d = p.decide(&req("POST", "/a", &[]));
        assert_eq!(d.matched_rule, Some(1));
        let d = p.decide(&HttpRequest { host: "other.example.com", ..req("POST", "/a", &[]) });
        assert_eq!((d.allowed, d.matched_rule), (false, None));
        let d = p.decide(&HttpRequest { host: "api.example.com:8080", ..req("POST", "/a", &[]) });
        assert!(!d.allowed, "the port is part of the host value as sent");
    }

    #[test]
    fn empty_rule_matches_everything_and_empty_list_allows_all() {
        let p = policy(&[HttpRule::default()]);
        assert_eq!(p.decide(&req("DELETE", "/x", &[])).matched_rule, Some(0));
        let empty_strings = policy(&[HttpRule { method: Some(String::new()), ..Default::default() }]);
        assert!(ok(&empty_strings, "PUT", "/x", &[]), "empty regex = field absent");
        for p in [policy(&[]), HttpPolicy::allow_all()] {
            let d = p.decide(&req("GET", "/", &[]));
            assert!(d.allowed && d.matched_rule.is_none() && p.is_empty());
        }
    }

    #[test]
    fn header_specs_parse() {
        let parse = |s: &str| parse_header_spec(s).expect("valid spec");
        assert_eq!(parse("X-Token").value, None);
        assert_eq!(parse("X-Token: abc").value.as_deref(), Some("abc"));
        assert_eq!(parse("X-Token:abc").value.as_deref(), Some("abc"));
        assert_eq!(parse("X-Token   abc def ").value.as_deref(), Some("abc def"));
        assert_eq!(parse("X-Token:").value, None);
        assert_eq!(parse("Content-Type: a:b").value.as_deref(), Some("a:b"));
        let pseudo = parse(":Method: GET");
        assert_eq!((pseudo.name.as_str(), pseudo.value.as_deref()), (":method", Some("GET")));
        assert!(parse_header_spec("").is_err());
        assert!(parse_header_spec(": x").is_err());
        let e = parse_header_spec("X(Bad): 1").expect_err("bad char");
        assert!(e.to_string().contains("'('"), "{e}");
    }

    #[test]
    fn headers_presence_and_exact_value() {
        let p = policy(&[headers(&["X-Present", "X-Env: prod"])]);
        assert!(ok(&p, "GET", "/", &[("x-present", ""), ("X-ENV", " prod ")]));
        assert!(!ok(&p, "GET", "/", &[("X-Env", "prod")]), "missing X-Present");
        assert!(!ok(&p, "GET", "/", &[("X-Present", "1"), ("X-Env", "Prod")]));
        // Repeated headers are joined with ',' before the exact comparison.
        let twice = [("X-Present", "1"), ("X-Env", "prod"), ("X-Env", "dev")];
        assert!(!ok(&p, "GET", "/", &twice));
        let joined = policy(&[headers(&["X-Env: prod,dev"])]);
        assert!(ok(&joined, "GET", "/", &twice));
        let pseudo = policy(&[headers(&[":method: PATCH"])]);
        assert!(ok(&pseudo, "PATCH", "/", &[]));
    }

    #[test]
    fn header_matches_without_action_are_required() {
        let p = policy(&[HttpRule {
            header_matches: vec![hm("X-Key", "s3cret", None), hm("X-Trace", "", None)],
            ..Default::default()
        }]);
        assert!(ok(&p, "GET", "/", &[("x-key", "s3cret"), ("X-Trace", "1")]));
        assert!(!ok(&p, "GET", "/", &[("x-key", "wrong"), ("X-Trace", "1")]));
        assert!(!ok(&p, "GET", "/", &[("x-key", "s3cret")]));
    }

    #[test]
    fn header_matches_with_actions_allow_and_report() {
        use MismatchAction::*;
        let p = policy(&[
            HttpRule {
                path: Some("/a".into()),
                header_matches: vec![
                    hm("X-Log", "yes", Some(Log)),
                    hm("X-Add", "v", Some(Add)),
                    hm("X-Del", "good", Some(Delete)),
                    hm("X-Del-Presence", "", Some(Delete)),
                    hm("X-Rep", "new", Some(Replace)),
                ],
                ..Default::default()
            },
            HttpRule {
                path: Some("/.*".into()),
                header_matches: vec![hm("X-Second", "2", Some(Add))],
                ..Default::default()
            },
            HttpRule {
                path: Some("/nope".into()),
                header_matches: vec![hm("X-Third", "3", Some(Add))],
                ..Default::default()
            },
        ]);
        let d = p.decide(&req("GET", "/a", &[("X-Del", "bad"), ("X-Rep", "old"), ("X-Log", "yes")]));
        assert_eq!((d.allowed, d.matched_rule), (true, Some(0)));
        let got: Vec<_> =
            d.header_actions.iter().map(|a| (a.rule, a.action, a.name.as_str(), a.found.as_deref())).collect();
        assert_eq!(
            got,
            [
                (0, Add, "X-Add", None),
                (0, Delete, "X-Del", Some("bad")),
                (0, Replace, "X-Rep", Some("old")),
                (1, Add, "X-Second", None),
            ]
        );
        // Everything already as expected: still allowed, only the other rule's action.
        let ok = [("X-Log", "yes"), ("X-Add", "v"), ("X-Rep", "new"), ("X-Second", "2")];
        let d = p.decide(&req("GET", "/a", &ok));
        assert!(d.allowed && d.header_actions.is_empty());
        let d = p.decide(&req("GET", "/b", &[]));
        assert_eq!((d.matched_rule, d.header_actions.len()), (Some(1), 1));

        // Applied in order to what is forwarded.
        let mut h: Vec<(String, String)> =
            [("x-del", "bad"), ("x-rep", "old"), ("x-log", "yes"), ("x-rep", "older"), ("x-add", "mine")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into();
        let d = p.decide(&req("GET", "/a", &[("X-Del", "bad"), ("X-Rep", "old"), ("X-Log", "yes"), ("x-add", "mine")]));
        for a in &d.header_actions {
            a.apply(&mut h);
        }
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(h, [("x-log", "yes"), ("x-add", "mine"), ("x-add", "v"), ("x-rep", "new"), ("x-second", "2")]);
    }

    #[test]
    fn a_header_value_with_a_control_character_is_refused() {
        assert!(validate_header_value("a b\tc ~ é").is_ok());
        for bad in ["a\r\nx-injected: 1", "a\nb", "a\0", "a\u{7f}"] {
            let e = validate_header_value(bad).expect_err(bad).to_string();
            assert!(e.contains("not allowed in a header value"), "{e}");
        }
        let rule = HttpRule {
            header_matches: vec![hm("X-A", "v\r\nX-B: 1", Some(MismatchAction::Add))],
            ..Default::default()
        };
        assert!(HttpPolicy::compile(&[rule]).is_err());
    }

    #[test]
    fn secrets_are_judged_as_missing_and_flagged() {
        let with_secret =
            |value: &str| HeaderMatch { secret: Some("ns/token".into()), ..hm("Authorization", value, None) };
        let fallback = policy(&[HttpRule { header_matches: vec![with_secret("Bearer x")], ..Default::default() }]);
        let d = fallback.decide(&req("GET", "/", &[("Authorization", "Bearer x")]));
        assert!(d.allowed && d.secret_unresolved);
        let no_value =
            policy(&[HttpRule { header_matches: vec![with_secret("")], ..Default::default() }, rule("POST", "/.*")]);
        let d = no_value.decide(&req("GET", "/", &[("Authorization", "anything")]));
        assert!(!d.allowed && d.secret_unresolved);
        let plain = policy(&[rule("GET", "/")]);
        assert!(!plain.decide(&req("GET", "/", &[])).secret_unresolved);
    }

    #[test]
    fn compile_reports_the_bad_field() {
        let bad = HttpRule { path: Some("[".into()), ..Default::default() };
        match HttpPolicy::compile(&[rule("GET", "/"), bad]) {
            Err(L7Error::RegexSyntax { field, pattern, .. }) => {
                assert_eq!((field.as_str(), pattern.as_str()), ("path", "["))
            }
            other => panic!("expected a path syntax error, got {other:?}"),
        }
        assert!(compile_regex("path", "a)|(b").is_err(), "must not escape the anchors");
        let bad_header = headers(&["a b c: d"]);
        assert!(HttpPolicy::compile(&[bad_header]).is_err(), "splits at the colon: name 'a b c' is no token");
    }

    proptest! {
        #[test]
        fn escaped_literals_match_only_themselves(s in "[ -~]{0,12}", extra in "[a-z]{1,3}") {
            let re = compile_regex("path", &regex::escape(&s)).expect("escaped literal compiles");
            prop_assert!(re.is_match(&s));
            let suffixed = format!("{s}{extra}");
            let prefixed = format!("{extra}{s}");
            prop_assert!(!re.is_match(&suffixed));
            prop_assert!(!re.is_match(&prefixed));
        }

        #[test]
        fn decide_is_or_of_single_rule_policies(methods in proptest::collection::vec("GET|POST|PUT|[A-Z]{1,4}", 0..4), m in "GET|POST|PUT|[A-Z]{1,4}") {
            let rules: Vec<HttpRule> = methods.iter().map(|x| HttpRule { method: Some(x.clone()), ..Default::default() }).collect();
            let whole = policy(&rules).decide(&req(&m, "/", &[]));
            let first = rules.iter().position(|r| policy(std::slice::from_ref(r)).decide(&req(&m, "/", &[])).allowed);
            prop_assert_eq!(whole.allowed, rules.is_empty() || first.is_some());
            prop_assert_eq!(whole.matched_rule, first);
        }
    }
}

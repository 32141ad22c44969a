//! L7 matchers: decide HTTP requests, DNS names and Kafka requests against
//! the rule types in [`crate::api::l7`], and check those rules for the
//! policy validator.
//!
//! This module owns the error type and [`check_rules`], which reports every
//! problem in a rule set with its field path; the per-protocol modules own
//! compilation and matching. Trade-off: each policy is compiled once into
//! regexes and lookup tables, so deciding is cheap but compiling costs a
//! regex build per distinct pattern (built regexes are kept by source, as
//! policy sets repeat their patterns; HTTP regexes are built in two forms,
//! see [`http::compile_regex`]).
//!
//! Empty rule lists follow Cilium: a port rule whose `http`, `kafka` or `dns`
//! list is present but empty selects no L7 parser, so traffic is allowed at
//! L4 with no proxy. [`HttpPolicy`] and [`KafkaPolicy`] compiled from an empty
//! list therefore allow everything; [`DnsPolicy`] is also used for `toFQDNs`,
//! where an empty list selects nothing, so it matches no name and the caller
//! treats `rules.dns: []` as "no L7 rules" (see [`DnsPolicy::is_empty`]).

pub mod dns;
pub mod http;
pub mod kafka;
pub mod path;

pub use dns::{DnsPolicy, normalize_name, selector_matches, validate_match_name, validate_match_pattern};
pub use http::{
    HeaderAction, HeaderEdit, HttpDecision, HttpPolicy, HttpRequest, compile_regex, validate_header_name,
    validate_header_value,
};
pub use kafka::{
    KafkaDecision, KafkaPolicy, KafkaRequest, api_key_from_name, api_key_name, role_api_keys, validate_topic,
};
pub use path::{EscapedSlashes, PathError, normalize_target};

use crate::api::l7::{FqdnSelector, L7Rules};
use regex::{Regex, RegexBuilder};

/// Compiled-program and lazy-DFA size limit for one L7 regex, in bytes.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Upper bound on nesting in an L7 regex: the regex compiler recurses once
/// per level, and hostile input must not exhaust a thread's stack (a real
/// path or method pattern nests a few levels).
pub const REGEX_NEST_LIMIT: u32 = 32;

/// Why an L7 rule could not be compiled or validated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum L7Error {
    /// A regex field does not parse.
    #[error("invalid {field} regex {pattern:?}: {reason}")]
    RegexSyntax {
        /// Which field held the regex (`method`, `path`, `host`, ...).
        field: String,
        /// The regex as written in the rule.
        pattern: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A regex parses but compiles to more than [`REGEX_SIZE_LIMIT`] bytes.
    #[error("{field} regex {pattern:?} is too big once compiled (limit {limit} bytes)")]
    RegexTooBig {
        /// Which field held the regex.
        field: String,
        /// The regex as written in the rule.
        pattern: String,
        /// The limit it exceeded, in bytes.
        limit: usize,
    },
    /// A `matchName` or `matchPattern` breaks Cilium's syntax or length rules.
    #[error("invalid {field} {value:?}: {reason}")]
    DnsName {
        /// `matchName` or `matchPattern`.
        field: &'static str,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `headers` entry or `headerMatches` name is not a usable header.
    #[error("invalid header {spec:?}: {reason}")]
    Header {
        /// The entry as written.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A Kafka topic is empty, too long, or has characters Kafka forbids.
    #[error("invalid Kafka topic {topic:?}: {reason}")]
    KafkaTopic {
        /// The topic as written.
        topic: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A Kafka rule combines fields badly or names an unknown key or version.
    #[error("invalid Kafka rule: {reason}")]
    KafkaRule {
        /// What is wrong with it.
        reason: String,
    },
}

/// Regexes built so far, by source: policy sets repeat the same method,
/// path and host patterns across thousands of rules, and building one costs
/// far more than the lookup (it dominated decoding a 10 MiB policy set).
/// Bounded: starts over past [`REGEX_CACHE_MAX`] sources.
static REGEX_CACHE: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, Regex>>> =
    std::sync::LazyLock::new(Default::default);

/// Distinct regex sources [`REGEX_CACHE`] keeps.
const REGEX_CACHE_MAX: usize = 1024;

/// Builds `source` as a regex under [`REGEX_SIZE_LIMIT`], reporting failures
/// against `field` and the user's `pattern` (which may differ from `source`).
/// A source built before is taken from [`REGEX_CACHE`] (a `Regex` is a
/// shared, immutable matcher, so handing out clones is safe).
pub(crate) fn build_regex(field: &str, pattern: &str, source: &str) -> Result<Regex, L7Error> {
    let cache = || REGEX_CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(r) = cache().get(source) {
        return Ok(r.clone());
    }
    let built = RegexBuilder::new(source)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .nest_limit(REGEX_NEST_LIMIT)
        .build()
        .map_err(|e| regex_error(field, pattern, e))?;
    let mut c = cache();
    if c.len() >= REGEX_CACHE_MAX {
        c.clear();
    }
    c.insert(source.to_owned(), built.clone());
    Ok(built)
}

fn regex_error(field: &str, pattern: &str, e: regex::Error) -> L7Error {
    match e {
        regex::Error::CompiledTooBig(limit) => {
            L7Error::RegexTooBig { field: field.to_owned(), pattern: pattern.to_owned(), limit }
        }
        regex::Error::Syntax(msg) => {
            L7Error::RegexSyntax { field: field.to_owned(), pattern: pattern.to_owned(), reason: syntax_summary(&msg) }
        }
        other => {
            L7Error::RegexSyntax { field: field.to_owned(), pattern: pattern.to_owned(), reason: other.to_string() }
        }
    }
}

/// Reduces the regex crate's multi-line syntax error to its `error:` line.
fn syntax_summary(msg: &str) -> String {
    msg.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error:"))
        .map_or_else(|| msg.trim().replace('\n', " "), |s| s.trim().to_owned())
}

/// Checks every regex, header, DNS name or pattern, and Kafka field in `rules`,
/// returning `(path, message)` for each problem, where `path` is the field's
/// suffix under the port rule's `rules` (e.g. `http[0].path`, `dns[2].matchName`).
///
/// TLS server names and generic `l7` rules are not checked here.
pub fn check_rules(rules: &L7Rules) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut push = |path: String, res: Result<(), L7Error>| {
        if let Err(e) = res {
            out.push((path, e.to_string()));
        }
    };
    match rules {
        L7Rules::Http(list) => {
            for (i, rule) in list.iter().enumerate() {
                for (name, value) in [("method", &rule.method), ("path", &rule.path), ("host", &rule.host)] {
                    if let Some(p) = value.as_deref().filter(|p| !p.is_empty()) {
                        push(format!("http[{i}].{name}"), compile_regex(name, p).map(drop));
                    }
                }
                for (j, spec) in rule.headers.iter().enumerate() {
                    push(format!("http[{i}].headers[{j}]"), http::parse_header_spec(spec).map(drop));
                }
                for (j, hm) in rule.header_matches.iter().enumerate() {
                    push(format!("http[{i}].headerMatches[{j}].name"), http::validate_header_name(&hm.name));
                    push(format!("http[{i}].headerMatches[{j}].value"), http::validate_header_value(&hm.value));
                }
            }
        }
        L7Rules::Dns(list) => {
            for (i, sel) in list.iter().enumerate() {
                match sel {
                    FqdnSelector::MatchName(n) => push(format!("dns[{i}].matchName"), validate_match_name(n)),
                    FqdnSelector::MatchPattern(p) => {
                        push(format!("dns[{i}].matchPattern"), validate_match_pattern(p));
                    }
                }
            }
        }
        L7Rules::Kafka(list) => {
            for (i, rule) in list.iter().enumerate() {
                for (field, res) in kafka::check_rule(rule) {
                    push(format!("kafka[{i}].{field}"), Err(res));
                }
            }
        }
        L7Rules::Tls(_) | L7Rules::Generic { .. } => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::l7::{HeaderMatch, HttpRule, KafkaRole, KafkaRule};

    #[test]
    fn check_rules_reports_every_problem_with_paths() {
        let http = L7Rules::Http(vec![
            HttpRule { method: Some("GET".into()), path: Some("/ok/.*".into()), ..Default::default() },
            HttpRule {
                method: Some("(".into()),
                path: Some("a)|(b".into()),
                host: Some("".into()),
                headers: vec!["X-Ok: 1".into(), "Bad Name: x".into(), "".into()],
                header_matches: vec![HeaderMatch { name: "".into(), ..Default::default() }],
            },
        ]);
        let paths: Vec<String> = check_rules(&http).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "http[1].method",
                "http[1].path",
                "http[1].headers[1]",
                "http[1].headers[2]",
                "http[1].headerMatches[0].name"
            ]
        );

        let dns = L7Rules::Dns(vec![
            FqdnSelector::MatchName("ok.example.com".into()),
            FqdnSelector::MatchName("*.example.com".into()),
            FqdnSelector::MatchPattern("**.example..com".into()),
        ]);
        let got = check_rules(&dns);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "dns[1].matchName");
        assert!(got[0].1.contains("'*'"), "{}", got[0].1);
        assert_eq!(got[1].0, "dns[2].matchPattern");

        let kafka = L7Rules::Kafka(vec![
            KafkaRule { role: Some(KafkaRole::Produce), topic: Some("ok".into()), ..Default::default() },
            KafkaRule {
                role: Some(KafkaRole::Consume),
                api_key: Some(99),
                api_version: Some(-1),
                topic: Some("bad/topic".into()),
                ..Default::default()
            },
        ]);
        let paths: Vec<String> = check_rules(&kafka).into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["kafka[1].apiKey", "kafka[1].apiKey", "kafka[1].apiVersion", "kafka[1].topic"]);

        assert!(check_rules(&L7Rules::Tls(vec!["x".into()])).is_empty());
    }

    #[test]
    fn regex_errors_name_field_and_reason() {
        let e = compile_regex("path", "(").expect_err("unclosed group");
        let msg = e.to_string();
        assert!(msg.starts_with("invalid path regex \"(\""), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        let big = "a{1000}{1000}";
        match compile_regex("host", big) {
            Err(L7Error::RegexTooBig { field, limit, .. }) => {
                assert_eq!(field, "host");
                assert_eq!(limit, REGEX_SIZE_LIMIT);
            }
            other => panic!("expected RegexTooBig, got {other:?}"),
        }
    }
}

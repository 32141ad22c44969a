//! Kafka matcher: Cilium's API-key table, role expansion, topic checks, and
//! the decision on one parsed request against `rules.kafka[]`.
//!
//! Owns the name/number table (Cilium's `APIKeyMap`, keys 0–33), the
//! produce/consume expansions, and the "every topic must be allowed" rule.
//! Trade-off: we decide on an already-parsed [`KafkaRequest`] (key, version,
//! client id, topic list) rather than wire bytes, so whatever decodes the
//! frame decides which topics a request names; a topic-carrying request that
//! names no topic (e.g. Metadata for all topics) only passes a rule without
//! a topic, exactly as in Cilium.

use super::L7Error;
use crate::api::l7::{KafkaRole, KafkaRule};

/// Cilium's accepted `apiKey` names, indexed by key number.
#[rustfmt::skip]
const API_KEY_NAMES: [&str; 34] = [
    "produce", "fetch", "offsets", "metadata", "leaderandisr", "stopreplica",
    "updatemetadata", "controlledshutdown", "offsetcommit", "offsetfetch",
    "findcoordinator", "joingroup", "heartbeat", "leavegroup", "syncgroup",
    "describegroups", "listgroups", "saslhandshake", "apiversions", "createtopics",
    "deletetopics", "deleterecords", "initproducerid", "offsetforleaderepoch",
    "addpartitionstotxn", "addoffsetstotxn", "endtxn", "writetxnmarkers",
    "txnoffsetcommit", "describeacls", "createacls", "deleteacls",
    "describeconfigs", "alterconfigs",
];

/// Keys the `produce` role expands to: Produce, Metadata, ApiVersions.
const PRODUCE_KEYS: &[i16] = &[0, 3, 18];

/// Keys the `consume` role expands to.
const CONSUME_KEYS: &[i16] = &[1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18];

/// Request kinds whose topics Cilium checks (its `isTopicAPIKey`); a rule's
/// topic is ignored for every other kind.
const TOPIC_KEYS: &[i16] = &[0, 1, 2, 3, 4, 5, 6, 8, 9, 19, 20, 21, 23, 24, 27, 28, 34, 35, 37];

/// Longest topic Cilium accepts (Kafka itself stops at 249).
pub const MAX_TOPIC_LEN: usize = 255;

/// The numeric key for a Cilium `apiKey` name, case-insensitively.
pub fn api_key_from_name(name: &str) -> Option<i16> {
    let i = API_KEY_NAMES.iter().position(|n| n.eq_ignore_ascii_case(name))?;
    i16::try_from(i).ok()
}

/// Cilium's name for a numeric API key, if it has one.
pub fn api_key_name(key: i16) -> Option<&'static str> {
    usize::try_from(key).ok().and_then(|i| API_KEY_NAMES.get(i)).copied()
}

/// The role for a `role` value, case-insensitively.
pub fn role_from_name(name: &str) -> Option<KafkaRole> {
    if name.eq_ignore_ascii_case("produce") {
        Some(KafkaRole::Produce)
    } else if name.eq_ignore_ascii_case("consume") {
        Some(KafkaRole::Consume)
    } else {
        None
    }
}

/// The API keys a role expands to, as Cilium expands them.
pub fn role_api_keys(role: KafkaRole) -> &'static [i16] {
    match role {
        KafkaRole::Produce => PRODUCE_KEYS,
        KafkaRole::Consume => CONSUME_KEYS,
    }
}

/// Whether requests of this kind carry topics that rules check.
pub fn is_topic_api_key(key: i16) -> bool {
    TOPIC_KEYS.contains(&key)
}

/// Checks a topic: 1 to 255 characters from `[a-zA-Z0-9._-]`.
pub fn validate_topic(topic: &str) -> Result<(), L7Error> {
    let err = |reason: String| Err(L7Error::KafkaTopic { topic: topic.to_owned(), reason });
    if topic.is_empty() {
        return err("must not be empty".into());
    }
    if topic.len() > MAX_TOPIC_LEN {
        return err(format!("is {} characters long; at most {MAX_TOPIC_LEN} are allowed", topic.len()));
    }
    match topic.char_indices().find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        Some((i, c)) => {
            err(format!("character {c:?} at position {i} is not allowed; only a-z, A-Z, 0-9, '.', '_' and '-' are"))
        }
        None => Ok(()),
    }
}

/// Every problem in one rule as `(field, error)`, field named as in the policy.
pub(crate) fn check_rule(rule: &KafkaRule) -> Vec<(&'static str, L7Error)> {
    let bad = |reason: String| L7Error::KafkaRule { reason };
    let mut out = Vec::new();
    if let (Some(role), Some(key)) = (rule.role, rule.api_key) {
        out.push(("apiKey", bad(format!("role {role:?} and apiKey {key} cannot both be set"))));
    }
    if let Some(key) = rule.api_key.filter(|k| api_key_name(*k).is_none()) {
        out.push(("apiKey", bad(format!("unknown apiKey {key}; Cilium knows keys 0 to 33"))));
    }
    if let Some(v) = rule.api_version.filter(|v| *v < 0) {
        out.push(("apiVersion", bad(format!("apiVersion {v} is negative"))));
    }
    if let Some(Err(e)) = rule.topic.as_deref().filter(|t| !t.is_empty()).map(validate_topic) {
        out.push(("topic", e));
    }
    out
}

/// One parsed Kafka request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRequest<'a> {
    /// The request's API key.
    pub api_key: i16,
    /// The request's API version.
    pub api_version: i16,
    /// The client id, if the request carried one.
    pub client_id: Option<&'a str>,
    /// Every topic the request names (repeats are fine).
    pub topics: Vec<&'a str>,
}

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaDecision {
    /// Whether the request may pass.
    pub allowed: bool,
    /// Rules that allowed the request or some of its topics, in policy order:
    /// one rule when a rule without a topic constraint matched, else the
    /// rules that covered the topics (also reported on a denial).
    pub matched_rules: Vec<usize>,
    /// Topics no matching rule allowed (empty when allowed).
    pub unmatched_topics: Vec<String>,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    keys: Vec<i16>,
    version: Option<i16>,
    client_id: Option<String>,
    topic: Option<String>,
}

impl CompiledRule {
    fn matches_header(&self, req: &KafkaRequest<'_>) -> bool {
        (self.keys.is_empty() || self.keys.contains(&req.api_key))
            && self.version.is_none_or(|v| v == req.api_version)
            && (self.client_id.as_deref()).is_none_or(|c| req.client_id == Some(c))
    }
}

/// A compiled `rules.kafka[]` list; an empty list allows every request.
#[derive(Debug, Clone, Default)]
pub struct KafkaPolicy {
    rules: Vec<CompiledRule>,
}

impl KafkaPolicy {
    /// Validates and compiles `rules`, failing on the first problem
    /// (use [`super::check_rules`] to list them all).
    pub fn compile(rules: &[KafkaRule]) -> Result<Self, L7Error> {
        let mut out = Vec::with_capacity(rules.len());
        for rule in rules {
            if let Some((_, e)) = check_rule(rule).into_iter().next() {
                return Err(e);
            }
            let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
            out.push(CompiledRule {
                keys: match rule.role {
                    Some(role) => role_api_keys(role).to_vec(),
                    None => rule.api_key.into_iter().collect(),
                },
                version: rule.api_version,
                client_id: nonempty(&rule.client_id),
                topic: nonempty(&rule.topic),
            });
        }
        Ok(Self { rules: out })
    }

    /// Number of compiled rules (zero for allow-all).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the policy has no rules, i.e. allows everything.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Decides `req` as Cilium does: rules are tried in order; one whose key,
    /// version and client id match allows the request outright if it has no
    /// topic or the request kind carries none; otherwise it ticks off its
    /// topic, and the request passes once every topic is ticked off.
    pub fn decide(&self, req: &KafkaRequest<'_>) -> KafkaDecision {
        let allow = |matched_rules| KafkaDecision { allowed: true, matched_rules, unmatched_topics: Vec::new() };
        if self.rules.is_empty() {
            return allow(Vec::new());
        }
        let topic_kind = is_topic_api_key(req.api_key);
        let mut remaining: Vec<&str> = Vec::new();
        for t in req.topics.iter().filter(|_| topic_kind) {
            if !remaining.contains(t) {
                remaining.push(t);
            }
        }
        let mut matched = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.matches_header(req) {
                continue;
            }
            let Some(topic) = rule.topic.as_deref().filter(|_| topic_kind) else {
                return allow(vec![i]);
            };
            if let Some(pos) = remaining.iter().position(|t| *t == topic) {
                remaining.remove(pos);
                matched.push(i);
                if remaining.is_empty() {
                    return allow(matched);
                }
            }
        }
        let unmatched_topics = remaining.into_iter().map(str::to_owned).collect();
        KafkaDecision { allowed: false, matched_rules: matched, unmatched_topics }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PRODUCE: i16 = 0;
    const FETCH: i16 = 1;
    const METADATA: i16 = 3;
    const HEARTBEAT: i16 = 12;
    const API_VERSIONS: i16 = 18;
    const CREATE_TOPICS: i16 = 19;

    fn req<'a>(api_key: i16, topics: &[&'a str]) -> KafkaRequest<'a> {
        KafkaRequest { api_key, api_version: 2, client_id: Some("app"), topics: topics.to_vec() }
    }

    fn topic_rule(role: Option<KafkaRole>, topic: &str) -> KafkaRule {
        KafkaRule { role, topic: Some(topic.into()), ..Default::default() }
    }

    fn policy(rules: &[KafkaRule]) -> KafkaPolicy {
        KafkaPolicy::compile(rules).expect("test rules compile")
    }

    #[test]
    fn api_key_table_matches_cilium() {
        assert_eq!(api_key_from_name("Produce"), Some(0));
        assert_eq!(api_key_from_name("APIVERSIONS"), Some(18));
        assert_eq!(api_key_from_name("offsetforleaderepoch"), Some(23));
        assert_eq!(api_key_from_name("alterconfigs"), Some(33));
        assert_eq!(api_key_from_name("createtopic"), None, "Cilium's name is createtopics");
        assert_eq!(api_key_from_name("alterreplicalogdirs"), None, "not in Cilium's table");
        assert_eq!(api_key_name(14), Some("syncgroup"));
        assert_eq!(api_key_name(34), None);
        assert_eq!(api_key_name(-1), None);
        assert_eq!(role_from_name("CONSUME"), Some(KafkaRole::Consume));
        assert_eq!(role_from_name("admin"), None);
        assert_eq!(role_api_keys(KafkaRole::Produce), [PRODUCE, METADATA, API_VERSIONS]);
        assert_eq!(role_api_keys(KafkaRole::Consume).len(), 11);
        assert!(!is_topic_api_key(10) && !is_topic_api_key(11), "FindCoordinator/JoinGroup carry no checked topic");
    }

    #[test]
    fn topic_validation() {
        assert!(validate_topic("orders.v1_eu-2").is_ok());
        assert!(validate_topic(&"t".repeat(255)).is_ok());
        let msg = |t: &str| validate_topic(t).expect_err("invalid").to_string();
        assert!(msg("").contains("empty"));
        assert!(msg(&"t".repeat(256)).contains("256 characters"));
        assert!(msg("a/b").contains("'/' at position 1"));
        assert!(msg(r"a\b").contains("'\\\\'"), "Cilium's regex lets '\\' through by accident; we do not");
    }

    #[test]
    fn rule_fields_are_anded() {
        let p = policy(&[KafkaRule {
            api_key: Some(PRODUCE),
            api_version: Some(2),
            client_id: Some("app".into()),
            topic: Some("orders".into()),
            ..Default::default()
        }]);
        assert!(p.decide(&req(PRODUCE, &["orders"])).allowed);
        assert!(!p.decide(&req(FETCH, &["orders"])).allowed);
        assert!(!p.decide(&KafkaRequest { api_version: 3, ..req(PRODUCE, &["orders"]) }).allowed);
        assert!(!p.decide(&KafkaRequest { client_id: None, ..req(PRODUCE, &["orders"]) }).allowed);
        assert!(!p.decide(&KafkaRequest { client_id: Some("other"), ..req(PRODUCE, &["orders"]) }).allowed);
        let d = p.decide(&req(PRODUCE, &["payments"]));
        assert_eq!((d.allowed, d.unmatched_topics), (false, vec!["payments".to_owned()]));
    }

    #[test]
    fn roles_expand_and_empty_rule_allows_all() {
        let p = policy(&[topic_rule(Some(KafkaRole::Produce), "orders")]);
        assert!(p.decide(&req(PRODUCE, &["orders"])).allowed);
        assert!(p.decide(&req(METADATA, &["orders"])).allowed);
        assert!(!p.decide(&req(FETCH, &["orders"])).allowed);
        assert!(!p.decide(&req(HEARTBEAT, &[])).allowed, "heartbeat is a consume key");
        let c = policy(&[topic_rule(Some(KafkaRole::Consume), "orders")]);
        assert!(c.decide(&req(HEARTBEAT, &[])).allowed, "topic ignored for topic-less kinds");
        assert!(c.decide(&req(API_VERSIONS, &[])).allowed);
        assert!(policy(&[KafkaRule::default()]).decide(&req(CREATE_TOPICS, &["x"])).allowed);
        let empty = policy(&[]);
        assert!(empty.is_empty() && empty.decide(&req(CREATE_TOPICS, &["x"])).allowed);
    }

    #[test]
    fn topic_kinds_without_topics_need_a_topicless_rule() {
        let p = policy(&[topic_rule(Some(KafkaRole::Produce), "orders")]);
        let d = p.decide(&req(METADATA, &[]));
        assert!(!d.allowed && d.unmatched_topics.is_empty());
        let open = policy(&[topic_rule(None, "orders"), KafkaRule { api_key: Some(METADATA), ..Default::default() }]);
        assert_eq!(open.decide(&req(METADATA, &[])).matched_rules, [1]);
    }

    #[test]
    fn every_topic_must_be_allowed() {
        let p = policy(&[
            topic_rule(Some(KafkaRole::Produce), "a"),
            topic_rule(Some(KafkaRole::Consume), "b"),
            topic_rule(Some(KafkaRole::Produce), "b"),
        ]);
        let d = p.decide(&req(PRODUCE, &["a", "b", "a"]));
        assert_eq!((d.allowed, d.matched_rules), (true, vec![0, 2]));
        let d = p.decide(&req(PRODUCE, &["a", "c"]));
        assert_eq!((d.allowed, d.matched_rules, d.unmatched_topics), (false, vec![0], vec!["c".to_owned()]));
        let d = p.decide(&req(FETCH, &["a", "b"]));
        assert_eq!(d.unmatched_topics, ["a"]);
    }

    #[test]
    fn compile_rejects_bad_rules() {
        let both = KafkaRule { role: Some(KafkaRole::Produce), api_key: Some(0), ..Default::default() };
        assert!(matches!(KafkaPolicy::compile(&[both]), Err(L7Error::KafkaRule { .. })));
        let key = KafkaRule { api_key: Some(40), ..Default::default() };
        assert!(KafkaPolicy::compile(&[key]).is_err());
        let version = KafkaRule { api_version: Some(-2), ..Default::default() };
        assert!(KafkaPolicy::compile(&[version]).is_err());
        assert!(matches!(KafkaPolicy::compile(&[topic_rule(None, "a b")]), Err(L7Error::KafkaTopic { .. })));
        assert!(KafkaPolicy::compile(&[topic_rule(None, "")]).is_ok(), "empty topic = any topic");
    }

    proptest! {
        #[test]
        fn names_round_trip(key in 0i16..34) {
            let name = api_key_name(key).expect("key in table");
            prop_assert_eq!(api_key_from_name(&name.to_uppercase()), Some(key));
        }

        #[test]
        fn topic_validation_matches_reference(t in "[a-zA-Z0-9._/ -]{0,12}") {
            let reference = regex::Regex::new("^[a-zA-Z0-9._-]+$").expect("reference regex");
            prop_assert_eq!(validate_topic(&t).is_ok(), reference.is_match(&t));
        }

        #[test]
        fn multi_topic_allowed_iff_all_covered(
            allowed in proptest::collection::btree_set("[a-d]", 0..4),
            asked in proptest::collection::vec("[a-e]", 1..5),
        ) {
            let rules: Vec<KafkaRule> = allowed.iter().map(|t| topic_rule(Some(KafkaRole::Produce), t)).collect();
            let topics: Vec<&str> = asked.iter().map(String::as_str).collect();
            let d = policy(&rules).decide(&req(PRODUCE, &topics));
            let expect = rules.is_empty() || asked.iter().all(|t| allowed.contains(t));
            prop_assert_eq!(d.allowed, expect);
            if !rules.is_empty() {
                prop_assert_eq!(d.unmatched_topics.is_empty(), expect);
            }
        }
    }
}

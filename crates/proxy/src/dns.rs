//! DNS messages as the DNS proxy takes them (issue 12), sans I/O, on
//! hickory-proto: a client's query read and checked ([`Query::parse`]),
//! the answers the proxy gives itself ([`Query::refuse`] for a denied
//! name, [`Query::server_failure`] when the upstream fails, [`format_error`]
//! for a query it cannot read), and what an upstream answer teaches
//! ([`Query::learn`]): the addresses of the *queried* name, following CNAME
//! chains, with the chain's lowest TTL (DESIGN.md §3, Cilium's `pkg/fqdn`).
//!
//! Owns DNS framing and the checks on it; which names a rule allows is
//! `bulkhead_policy::l7::DnsPolicy`'s. Not wired to sockets yet: the proxy
//! has no DNS listener, so DNS rules' traffic is still dropped (fail closed).
//!
//! Strictness, for what a client sends: one question, class IN, opcode
//! QUERY, not a response; anything else gets FORMERR (a query whose
//! 12-byte header is not even there gets nothing). For what the upstream
//! sends: it must be a response to this query (same ID and question),
//! else the proxy gives SERVFAIL; its rcode passes through.

use std::collections::HashSet;
use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

/// Addresses learnt from one answer, at most (a message of 64 KiB holds
/// about 4,000 A records; the name→address cache has its own cap).
pub const MAX_LEARNT: usize = 4096;

/// The largest DNS message (TCP's length prefix; UDP's datagram limit).
pub const MAX_MESSAGE: usize = 65_535;

/// Longest CNAME chain followed.
const MAX_CHAIN: usize = 16;

/// A client's query, checked.
#[derive(Debug, Clone)]
pub struct Query {
    message: Message,
    /// The queried name, lowercased, with its trailing dot (how
    /// `matchName` and `matchPattern` see it).
    pub name: String,
    /// The queried type.
    pub qtype: RecordType,
}

/// Why a client's query is not forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadQuery {
    /// Not even a DNS header: nothing to answer.
    #[error("not a DNS message ({0} bytes)")]
    NoHeader(usize),
    /// A header, but not a query the proxy forwards: answered FORMERR
    /// (`id` is the client's).
    #[error("malformed query: {why}")]
    Malformed {
        /// The client's message ID.
        id: u16,
        /// What is wrong.
        why: String,
    },
}

/// Why an upstream answer is not relayed (the client gets SERVFAIL).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad upstream answer: {0}")]
pub struct BadAnswer(String);

/// What an allowed answer teaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learnt {
    /// The upstream's rcode (passed through to the client).
    pub rcode: ResponseCode,
    /// The names of the CNAME chain from the queried name, in order,
    /// lowercased (the queried name not among them).
    pub cnames: Vec<String>,
    /// A and AAAA addresses of the queried name or of its chain, each once,
    /// in answer order.
    pub addrs: Vec<IpAddr>,
    /// The lowest TTL of the records used (the CNAMEs followed and the
    /// addresses); 0 when there are none.
    pub ttl: u32,
}

/// The client's message ID, when `bytes` has a header.
fn id_of(bytes: &[u8]) -> Option<u16> {
    (bytes.len() >= 12).then(|| u16::from_be_bytes([bytes[0], bytes[1]]))
}

/// `name` as rules see it: lowercased, with its trailing dot.
fn fqdn(name: &Name) -> String {
    let mut s = name.to_lowercase().to_ascii();
    if !s.ends_with('.') {
        s.push('.');
    }
    s
}

impl Query {
    /// Reads and checks a client's query.
    pub fn parse(bytes: &[u8]) -> Result<Self, BadQuery> {
        let id = id_of(bytes).ok_or(BadQuery::NoHeader(bytes.len()))?;
        let bad = |why: String| BadQuery::Malformed { id, why };
        let message = Message::from_vec(bytes).map_err(|e| bad(e.to_string()))?;
        if message.metadata.message_type != MessageType::Query {
            return Err(bad("a response, not a query".into()));
        }
        if message.metadata.op_code != OpCode::Query {
            return Err(bad(format!("opcode {:?}, not QUERY", message.metadata.op_code)));
        }
        let [q] = &message.queries[..] else {
            return Err(bad(format!("{} questions, not one", message.queries.len())));
        };
        if q.query_class() != DNSClass::IN {
            return Err(bad(format!("class {}, not IN", q.query_class())));
        }
        if !message.answers.is_empty() || !message.authorities.is_empty() {
            return Err(bad("a query with answer or authority records".into()));
        }
        let (name, qtype) = (fqdn(q.name()), q.query_type());
        Ok(Self { message, name, qtype })
    }

    /// The client's message ID.
    pub fn id(&self) -> u16 {
        self.message.metadata.id
    }

    /// The proxy's own answer: `rcode` for this question, the client's ID,
    /// RD copied, RA set, no records (EDNS kept when the client sent it).
    fn answer(&self, rcode: ResponseCode) -> Vec<u8> {
        let mut m = Message::error_msg(self.id(), OpCode::Query, rcode);
        m.metadata.recursion_desired = self.message.metadata.recursion_desired;
        m.metadata.recursion_available = true;
        m.queries = self.message.queries.clone();
        m.edns = self.message.edns.clone();
        // A message made of what was just parsed always encodes.
        m.to_vec().unwrap_or_default()
    }

    /// The answer to a denied query: REFUSED (Cilium's default) or, as an
    /// option, NXDOMAIN.
    pub fn refuse(&self, nxdomain: bool) -> Vec<u8> {
        self.answer(if nxdomain { ResponseCode::NXDomain } else { ResponseCode::Refused })
    }

    /// The answer when the upstream failed or answered wrongly: SERVFAIL.
    pub fn server_failure(&self) -> Vec<u8> {
        self.answer(ResponseCode::ServFail)
    }

    /// Checks that `bytes` answers this query, and reads what it teaches.
    pub fn learn(&self, bytes: &[u8]) -> Result<Learnt, BadAnswer> {
        let m = Message::from_vec(bytes).map_err(|e| BadAnswer(e.to_string()))?;
        if m.metadata.message_type != MessageType::Response || m.metadata.id != self.id() {
            return Err(BadAnswer("not a response to this query (type or ID)".into()));
        }
        let asked = &self.message.queries[0];
        let same = |q: &hickory_proto::op::Query| {
            fqdn(q.name()) == self.name
                && q.query_type() == asked.query_type()
                && q.query_class() == asked.query_class()
        };
        if !(m.queries.len() == 1 && same(&m.queries[0])) {
            return Err(BadAnswer("the answer's question is not the query's".into()));
        }
        // The chain: the queried name, then each CNAME target in turn.
        let mut chain: Vec<String> = vec![self.name.clone()];
        let mut ttl: Option<u32> = None;
        let lowest = |t: u32, ttl: &mut Option<u32>| *ttl = Some(ttl.map_or(t, |old| old.min(t)));
        while chain.len() <= MAX_CHAIN {
            let last = chain.last().expect("the chain starts with the queried name");
            let next = m.answers.iter().find_map(|r| match &r.data {
                RData::CNAME(c) if fqdn(&r.name) == *last => Some((fqdn(&c.0), r.ttl)),
                _ => None,
            });
            match next {
                Some((target, t)) if !chain.contains(&target) => {
                    lowest(t, &mut ttl);
                    chain.push(target);
                }
                _ => break,
            }
        }
        let owners: HashSet<&str> = chain.iter().map(String::as_str).collect();
        let mut addrs = Vec::new();
        for r in &m.answers {
            let addr = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            if owners.contains(fqdn(&r.name).as_str()) && !addrs.contains(&addr) && addrs.len() < MAX_LEARNT {
                lowest(r.ttl, &mut ttl);
                addrs.push(addr);
            }
        }
        let cnames = chain.split_off(1);
        let ttl = if addrs.is_empty() { 0 } else { ttl.unwrap_or(0) };
        Ok(Learnt { rcode: m.metadata.response_code, cnames, addrs, ttl })
    }
}

/// FORMERR for a query the proxy cannot read, with the client's ID.
pub fn format_error(id: u16) -> Vec<u8> {
    let mut m = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
    m.metadata.recursion_available = true;
    m.to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query as Question;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("name")
    }

    fn query(n: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.metadata.recursion_desired = true;
        m.add_query(Question::query(name(n), t));
        m.to_vec().expect("encode")
    }

    fn answer(q: &[u8], records: Vec<Record>, rcode: ResponseCode) -> Vec<u8> {
        let q = Message::from_vec(q).expect("query");
        let mut m = Message::response(q.metadata.id, OpCode::Query);
        m.metadata.response_code = rcode;
        m.queries = q.queries;
        m.answers = records;
        m.to_vec().expect("encode")
    }

    fn rec(owner: &str, ttl: u32, data: RData) -> Record {
        Record::from_rdata(name(owner), ttl, data)
    }

    #[test]
    fn a_query_is_read_with_its_name_as_rules_see_it() {
        let q = Query::parse(&query("API.Stripe.com.", RecordType::A)).expect("a query");
        assert_eq!((q.id(), q.name.as_str(), q.qtype), (0x1234, "api.stripe.com.", RecordType::A));
    }

    #[test]
    fn what_is_not_one_plain_query_is_formerr_or_nothing() {
        assert_eq!(Query::parse(&[0; 5]).expect_err("five bytes"), BadQuery::NoHeader(5));
        let ok = query("a.example.", RecordType::A);
        let mut two = Message::from_vec(&ok).expect("query");
        two.add_query(Question::query(name("b.example."), RecordType::A));
        let mut response = Message::from_vec(&ok).expect("query");
        response.metadata.message_type = MessageType::Response;
        let mut chaos = Message::from_vec(&ok).expect("query");
        chaos.queries[0].set_query_class(DNSClass::CH);
        let mut update = Message::from_vec(&ok).expect("query");
        update.metadata.op_code = OpCode::Update;
        for (m, why) in [(two, "questions"), (response, "response"), (chaos, "class"), (update, "opcode")] {
            match Query::parse(&m.to_vec().expect("encode")) {
                Err(BadQuery::Malformed { id: 0x1234, why: w }) => assert!(w.contains(why), "{w}"),
                other => panic!("{why}: {other:?}"),
            }
        }
        // Truncated mid-question: FORMERR with the client's ID.
        assert!(matches!(Query::parse(&ok[..ok.len() - 3]), Err(BadQuery::Malformed { id: 0x1234, .. })));
        let f = Message::from_vec(&format_error(0x1234)).expect("FORMERR decodes");
        assert_eq!((f.metadata.id, f.metadata.response_code), (0x1234, ResponseCode::FormErr));
    }

    #[test]
    fn the_proxys_own_answers_keep_the_id_and_question() {
        let q = Query::parse(&query("evil.example.com.", RecordType::AAAA)).expect("a query");
        for (bytes, rcode) in [
            (q.refuse(false), ResponseCode::Refused),
            (q.refuse(true), ResponseCode::NXDomain),
            (q.server_failure(), ResponseCode::ServFail),
        ] {
            let m = Message::from_vec(&bytes).expect("decodes");
            assert_eq!(m.metadata.message_type, MessageType::Response);
            assert_eq!((m.metadata.id, m.metadata.response_code), (0x1234, rcode));
            assert!(m.metadata.recursion_desired && m.metadata.recursion_available);
            assert_eq!(
                m.queries,
                Message::from_vec(&query("evil.example.com.", RecordType::AAAA)).expect("query").queries
            );
            assert!(m.answers.is_empty());
        }
    }

    #[test]
    fn an_answer_teaches_the_queried_names_addresses_through_its_cname_chain() {
        let qb = query("www.example.com.", RecordType::A);
        let q = Query::parse(&qb).expect("a query");
        let records = vec![
            rec("www.example.com.", 300, RData::CNAME(CNAME(name("edge.cdn.net.")))),
            rec("edge.cdn.net.", 60, RData::CNAME(CNAME(name("EDGE-7.cdn.net.")))),
            rec("edge-7.cdn.net.", 120, RData::A(A::new(198, 18, 0, 7))),
            rec("edge-7.cdn.net.", 30, RData::A(A::new(198, 18, 0, 8))),
            rec("edge-7.cdn.net.", 120, RData::A(A::new(198, 18, 0, 7))),
            rec("unrelated.example.", 1, RData::A(A::new(198, 18, 0, 9))),
            rec("edge-7.cdn.net.", 90, RData::AAAA(AAAA::new(0xfd00, 0xb, 0, 0, 0, 0, 0, 7))),
        ];
        let l = q.learn(&answer(&qb, records, ResponseCode::NoError)).expect("an answer");
        assert_eq!(l.cnames, ["edge.cdn.net.", "edge-7.cdn.net."]);
        let want: Vec<IpAddr> = ["198.18.0.7", "198.18.0.8", "fd00:b::7"].map(|a| a.parse().expect("ip")).into();
        assert_eq!(l.addrs, want, "each once, the unrelated owner's not at all");
        assert_eq!((l.rcode, l.ttl), (ResponseCode::NoError, 30));
    }

    #[test]
    fn a_cname_loop_ends_and_nxdomain_teaches_nothing() {
        let qb = query("a.example.", RecordType::A);
        let q = Query::parse(&qb).expect("a query");
        let records = vec![
            rec("a.example.", 10, RData::CNAME(CNAME(name("b.example.")))),
            rec("b.example.", 10, RData::CNAME(CNAME(name("a.example.")))),
        ];
        let l = q.learn(&answer(&qb, records, ResponseCode::NoError)).expect("an answer");
        assert_eq!((l.cnames.as_slice(), l.addrs.len(), l.ttl), (&["b.example.".to_owned()][..], 0, 0));
        let l = q.learn(&answer(&qb, Vec::new(), ResponseCode::NXDomain)).expect("an answer");
        assert_eq!((l.rcode, l.addrs.len()), (ResponseCode::NXDomain, 0));
    }

    #[test]
    fn an_answer_to_another_query_is_refused() {
        let qb = query("api.stripe.com.", RecordType::A);
        let q = Query::parse(&qb).expect("a query");
        let a = vec![rec("api.stripe.com.", 60, RData::A(A::new(198, 18, 0, 1)))];
        let mut other_id = Message::from_vec(&answer(&qb, a.clone(), ResponseCode::NoError)).expect("answer");
        other_id.metadata.id = 7;
        let other_name = answer(&query("evil.example.com.", RecordType::A), a.clone(), ResponseCode::NoError);
        let other_type = answer(&query("api.stripe.com.", RecordType::AAAA), a, ResponseCode::NoError);
        for (bytes, why) in
            [(other_id.to_vec().expect("encode"), "ID"), (other_name, "question"), (other_type, "question")]
        {
            assert!(q.learn(&bytes).expect_err(why).0.contains(why), "{why}");
        }
        assert!(q.learn(&qb).is_err(), "the query itself is no answer");
        assert!(q.learn(b"\x12\x34").is_err());
    }
}

//! `bulkhead.io/v1alpha1 Guardrails`: an organisation's rules for policies,
//! read from the file `--guardrails` names (never applied as a policy).
//! Every field is checked, so a misspelt guardrail is an error, never a
//! rule silently not enforced.

use super::{Decoder, Fields, ProtocolSet, Unknown};
use crate::api::{Guardrails, GuardrailsSpec, Origin};
use crate::diag::FieldPath;
use crate::yaml::Node;

const SPEC_FIELDS: &[&str] =
    &["forbidIngressFromWorld", "requireDefaultDeny", "forbidEntityAll", "minCIDRPrefixLength", "requireL7"];

impl Decoder<'_> {
    /// A Guardrails object's `spec`.
    pub(super) fn guardrails(&mut self, f: &Fields<'_>, name: String, origin: Origin) -> Option<Guardrails> {
        let path = f.path("spec");
        let node = self.required(f, "spec", "add e.g. `spec: {requireDefaultDeny: true, forbidEntityAll: true}`")?;
        let errors = self.sink.error_count();
        let s = self.map(node, &path, SPEC_FIELDS, Unknown::Error)?;
        let mut spec = GuardrailsSpec::default();
        if let Some(n) = s.value("forbidIngressFromWorld") {
            let p = s.path("forbidIngressFromWorld");
            if let Some(m) = self.map(n, &p, &["exceptNamespaces"], Unknown::Error) {
                let except = match m.value("exceptNamespaces") {
                    Some(n) => self.strings(n, &m.path("exceptNamespaces")).unwrap_or_default(),
                    None => Vec::new(),
                };
                spec.forbid_ingress_from_world = Some(except.into_iter().map(|(s, _)| s).collect());
            }
        }
        for (field, slot) in
            [("requireDefaultDeny", &mut spec.require_default_deny), ("forbidEntityAll", &mut spec.forbid_entity_all)]
        {
            if let Some(n) = s.value(field) {
                *slot = self.bool(n, &s.path(field)).unwrap_or_default();
            }
        }
        if let Some(n) = s.value("minCIDRPrefixLength") {
            let p = s.path("minCIDRPrefixLength");
            if let Some(m) = self.map(n, &p, &["ipv4", "ipv6"], Unknown::Error) {
                let len = |d: &mut Self, field: &str, max: i64| {
                    m.value(field).and_then(|n| d.int(n, &m.path(field), 0, max)).and_then(|v| u8::try_from(v).ok())
                };
                spec.min_prefix_ipv4 = len(self, "ipv4", 32);
                spec.min_prefix_ipv6 = len(self, "ipv6", 128);
                if m.value("ipv4").is_none() && m.value("ipv6").is_none() {
                    self.sink.error_fix(n.pos, &p, "names no family", "add `ipv4: 16` and/or `ipv6: 48`");
                }
            }
        }
        if let Some(n) = s.value("requireL7") {
            spec.require_l7 = self.items(n, &s.path("requireL7"), Self::guarded_port).unwrap_or_default();
        }
        if spec == GuardrailsSpec::default() && self.sink.error_count() == errors {
            self.sink.error_fix(
                node.pos,
                &path,
                "names no guardrail: it would check nothing",
                format!("add one of {}", SPEC_FIELDS.join(", ")),
            );
        }
        (self.sink.error_count() == errors).then_some(Guardrails { name, origin, spec })
    }

    /// One `requireL7` entry: `{port: 8080, protocol: TCP}` (TCP when omitted).
    fn guarded_port(&mut self, node: &Node, path: &FieldPath) -> Option<(crate::api::Protocol, u16)> {
        let f = self.map(node, path, &["port", "protocol"], Unknown::Error)?;
        let protocol = self.protocol(f.value("protocol"), &f.path("protocol"), ProtocolSet::Kubernetes)?;
        let Some(p) = f.value("port") else {
            self.sink.error_fix(node.pos, &f.path("port"), "missing field `port`", "add `port: 8080`");
            return None;
        };
        let port = self.int(p, &f.path("port"), 1, 65535)?;
        Some((protocol, u16::try_from(port).ok()?))
    }
}

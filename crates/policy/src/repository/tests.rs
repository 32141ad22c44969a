use super::*;
use crate::testutil::objects;

fn rules(src: &str) -> Vec<CompiledRule> {
    match objects(src).remove(0) {
        crate::api::Object::Policy(p) => compile(&p),
        o => panic!("{o:?}"),
    }
}

#[test]
fn to_ports_without_l3_selects_all_peers() {
    let r = rules(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {}\n  egress: [{toPorts: [{ports: [{port: \"53\", protocol: ANY}]}]}]\n",
    );
    assert_eq!(r[0].egress.contributions[0].peers, vec![PeerSel::All]);
    assert_eq!(r[0].egress.contributions[0].ports.len(), 3, "ANY is TCP, UDP, SCTP");
}

#[test]
fn empty_rule_and_empty_list_select_nothing() {
    let r = rules(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {}\n  ingress: [{}, {fromEndpoints: []}]\n",
    );
    assert!(r[0].ingress.present);
    assert!(r[0].ingress.contributions.iter().all(|c| c.peers.is_empty()));
}

#[test]
fn cluster_entity_includes_reserved_and_pods() {
    let peers = entity_peers(Entity::Cluster);
    assert_eq!(peers.len(), 8);
}

#[test]
fn network_policy_default_policy_types() {
    let r = rules(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n  egress: [{}]\n",
    );
    assert!(r[0].ingress.present && r[0].egress.present);
    let r =
        rules("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n");
    assert!(r[0].ingress.present && !r[0].egress.present);
}

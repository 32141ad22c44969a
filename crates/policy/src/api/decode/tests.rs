use super::*;
use crate::diag::Sink;

fn decode(src: &str) -> (Vec<Object>, Vec<String>) {
    let mut sink = Sink::new("t.yaml");
    let objs = decode_str(src, &DecodeOptions::default(), &mut sink);
    (objs, sink.diagnostics.iter().map(ToString::to_string).collect())
}

#[test]
fn minimal_cnp() {
    let (objs, diags) = decode(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\n",
    );
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(objs.len(), 1);
}

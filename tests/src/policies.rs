//! Policies the scenarios share: the same ALLOW, DENY and STRICT manifests enforce in `l4`
//! and must stay in force through invalid edits in `attacks`.

/// Lets only client-a reach the servers.
pub const ALLOW_CLIENT_A: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client-a, namespace: mesh}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/mesh/sa/client-a"]}}]
"#;

/// Keeps client-b away from the servers.
pub const DENY_CLIENT_B: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client-b, namespace: mesh}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/mesh/sa/client-b"]}}]
"#;

/// Mutual TLS required in namespace `mesh`: plaintext is refused.
pub const STRICT_MESH: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: mesh}
spec:
  mtls: {mode: STRICT}
"#;

/// A policy that changes nothing (a DENY for a service account no pod runs as), named
/// `name`: once a ztunnel shows it, every edit made before it has reached that ztunnel.
pub fn marker(name: &str) -> String {
    format!(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: mesh}}
spec:
  action: DENY
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/mesh/sa/no-such-account"]}}}}]
"#
    )
}

//! mesh::authz: Istio's L4 authorization semantics, table-driven. Each case is a set of
//! policies (in the local file's YAML), a connection, and the expected verdict, deciding
//! policy and reason.

use std::net::IpAddr;

use mesh::authz::{authorize, ConnInfo, Reason, Verdict};
use mesh::state::{LocalConfig, Snapshot};
use mesh::Identity;

/// `server` names the policies `shop/bound-*`; `peer` is in the same namespace but names
/// none; `remote` is in another namespace.
const WORKLOADS: &str = r#"
workloads:
- {name: server, namespace: shop, serviceAccount: server, workloadIps: [10.0.0.10], protocol: HBONE,
   authorizationPolicies: [shop/bound-allow, shop/bound-deny]}
- {name: peer, namespace: shop, serviceAccount: peer, workloadIps: [10.0.0.11], protocol: HBONE}
- {name: remote, namespace: other, serviceAccount: remote, workloadIps: [10.0.1.10], protocol: HBONE}
"#;

/// Istio's translation of a mesh-wide PeerAuthentication STRICT with a port-level PERMISSIVE
/// exception on 9999: deny what arrives without a peer identity, except on that port.
const STRICT: &str =
    "- {name: istio_converted_static_strict, namespace: istio-system, scope: Global, action: Deny,
   rules: [[[{notPrincipals: [{presence: {}}], notDestinationPorts: [9999]}]]]}";

const ALLOW_WEB: &str = "- {name: allow-web, namespace: shop, scope: Namespace, action: Allow,
   rules: [[[{principals: [{exact: cluster.local/ns/shop/sa/web}]}]]]}";

struct Case {
    name: &'static str,
    policies: &'static [&'static str],
    dst: &'static str,
    from: Option<&'static str>,
    src_ip: &'static str,
    dst_port: u16,
    expect: Verdict,
    policy: Option<&'static str>,
    reason: Reason,
}

const WEB: Option<&str> = Some("spiffe://cluster.local/ns/shop/sa/web");
const EVIL: Option<&str> = Some("spiffe://cluster.local/ns/evil/sa/web");
const PLAIN: Option<&str> = None;

fn case(
    name: &'static str,
    policies: &'static [&'static str],
    from: Option<&'static str>,
    dst_port: u16,
    expect: (Verdict, Option<&'static str>, Reason),
) -> Case {
    Case {
        name,
        policies,
        dst: "server",
        from,
        src_ip: "10.1.2.3",
        dst_port,
        expect: expect.0,
        policy: expect.1,
        reason: expect.2,
    }
}

use Reason::*;
use Verdict::*;

fn cases() -> Vec<Case> {
    let mut v = vec![
        // PERMISSIVE: no policy at all, plaintext is allowed.
        case("permissive plaintext", &[], PLAIN, 8080, (Allow, None, NoAllowPolicies)),
        // ALLOW by principal.
        case("allow principal: web", &[ALLOW_WEB], WEB, 8080, (Allow, Some("shop/allow-web"), AllowMatched)),
        case("allow principal: evil", &[ALLOW_WEB], EVIL, 8080, (Deny, None, NoAllowMatched)),
        case("allow principal: plaintext", &[ALLOW_WEB], PLAIN, 8080, (Deny, None, NoAllowMatched)),
        // DENY on a port beats a matching ALLOW.
        case("deny port beats allow", &[ALLOW_WEB, "- {name: deny-9090, namespace: shop, scope: Namespace, action: Deny, rules: [[[{destinationPorts: [9090]}]]]}"],
            WEB, 9090, (Deny, Some("shop/deny-9090"), DenyMatched)),
        case("deny port, other port", &[ALLOW_WEB, "- {name: deny-9090, namespace: shop, scope: Namespace, action: Deny, rules: [[[{destinationPorts: [9090]}]]]}"],
            WEB, 8080, (Allow, Some("shop/allow-web"), AllowMatched)),
        // Scopes.
        case("global deny applies everywhere", &["- {name: no-evil, namespace: istio-system, scope: Global, action: Deny, rules: [[[{namespaces: [{exact: evil}]}]]]}"],
            EVIL, 8080, (Deny, Some("istio-system/no-evil"), DenyMatched)),
        case("other namespace's policy does not apply", &["- {name: deny-all, namespace: other, scope: Namespace, action: Deny, rules: [[[{destinationPorts: [8080]}]]]}"],
            WEB, 8080, (Allow, None, NoAllowPolicies)),
        case("workload-bound policy applies to its workload", &["- {name: bound-deny, namespace: shop, scope: WorkloadSelector, action: Deny, rules: [[[{principals: [{suffix: /sa/web}]}]]]}"],
            WEB, 8080, (Deny, Some("shop/bound-deny"), DenyMatched)),
        case("unbound workload-selector policy does not apply", &["- {name: loose, namespace: shop, scope: WorkloadSelector, action: Deny, rules: [[[{principals: [{suffix: /sa/web}]}]]]}"],
            WEB, 8080, (Allow, None, NoAllowPolicies)),
        // not_ forms.
        case("notNamespaces denies outsiders", &["- {name: only-shop, namespace: shop, scope: Namespace, action: Deny, rules: [[[{notNamespaces: [{exact: shop}]}]]]}"],
            EVIL, 8080, (Deny, Some("shop/only-shop"), DenyMatched)),
        case("notNamespaces lets insiders in", &["- {name: only-shop, namespace: shop, scope: Namespace, action: Deny, rules: [[[{notNamespaces: [{exact: shop}]}]]]}"],
            WEB, 8080, (Allow, None, NoAllowPolicies)),
        case("notNamespaces denies plaintext", &["- {name: only-shop, namespace: shop, scope: Namespace, action: Deny, rules: [[[{notNamespaces: [{exact: shop}]}]]]}"],
            PLAIN, 8080, (Deny, Some("shop/only-shop"), DenyMatched)),
        case("notSourceIps", &["- {name: not-lan, namespace: shop, scope: Namespace, action: Allow, rules: [[[{notSourceIps: [10.1.0.0/16]}]]]}"],
            WEB, 8080, (Deny, None, NoAllowMatched)),
        case("notServiceAccounts", &["- {name: not-web, namespace: shop, scope: Namespace, action: Allow, rules: [[[{notServiceAccounts: [{namespace: shop, serviceAccount: web}]}]]]}"],
            EVIL, 8080, (Allow, Some("shop/not-web"), AllowMatched)),
        // Service accounts compare namespace and name.
        case("serviceAccounts: same name, other namespace", &["- {name: sa, namespace: shop, scope: Namespace, action: Allow, rules: [[[{serviceAccounts: [{namespace: shop, serviceAccount: web}]}]]]}"],
            EVIL, 8080, (Deny, None, NoAllowMatched)),
        case("serviceAccounts: match", &["- {name: sa, namespace: shop, scope: Namespace, action: Allow, rules: [[[{serviceAccounts: [{namespace: shop, serviceAccount: web}]}]]]}"],
            WEB, 8080, (Allow, Some("shop/sa"), AllowMatched)),
        // Principal prefix; destination IPs.
        case("principal prefix", &["- {name: p, namespace: shop, scope: Namespace, action: Allow, rules: [[[{principals: [{prefix: cluster.local/ns/shop/}]}]]]}"],
            WEB, 8080, (Allow, Some("shop/p"), AllowMatched)),
        case("destination ip", &["- {name: d, namespace: shop, scope: Namespace, action: Deny, rules: [[[{destinationIps: [10.0.0.0/28]}]]]}"],
            WEB, 8080, (Deny, Some("shop/d"), DenyMatched)),
        // Rules OR-ed, clauses AND-ed, matches OR-ed.
        case("clauses are AND-ed", &["- {name: and, namespace: shop, scope: Namespace, action: Allow, rules: [[[{principals: [{suffix: /sa/web}]}], [{destinationPorts: [8080]}]]]}"],
            WEB, 9090, (Deny, None, NoAllowMatched)),
        case("matches are OR-ed", &["- {name: or, namespace: shop, scope: Namespace, action: Allow, rules: [[[{principals: [{suffix: /sa/nobody}]}, {destinationPorts: [9090]}]]]}"],
            WEB, 9090, (Allow, Some("shop/or"), AllowMatched)),
        case("rules are OR-ed", &["- {name: rules, namespace: shop, scope: Namespace, action: Allow, rules: [[[{destinationPorts: [1]}]], [[{destinationPorts: [9090]}]]]}"],
            WEB, 9090, (Allow, Some("shop/rules"), AllowMatched)),
        case("fields in a match are AND-ed", &["- {name: both, namespace: shop, scope: Namespace, action: Allow, rules: [[[{principals: [{suffix: /sa/web}], destinationPorts: [8080]}]]]}"],
            WEB, 9090, (Deny, None, NoAllowMatched)),
        // A policy without rules matches nothing; so does a match without conditions; a rule
        // without clauses matches everything.
        case("no-rules ALLOW allows nothing", &["- {name: empty, namespace: shop, scope: Namespace, action: Allow, rules: []}"],
            WEB, 8080, (Deny, None, NoAllowMatched)),
        case("no-rules DENY denies nothing", &["- {name: empty, namespace: shop, scope: Namespace, action: Deny}"],
            WEB, 8080, (Allow, None, NoAllowPolicies)),
        case("empty match matches nothing", &["- {name: m, namespace: shop, scope: Namespace, action: Allow, rules: [[[{}]]]}"],
            WEB, 8080, (Deny, None, NoAllowMatched)),
        case("rule without clauses matches all", &["- {name: all, namespace: shop, scope: Namespace, action: Allow, rules: [[]]}"],
            PLAIN, 8080, (Allow, Some("shop/all"), AllowMatched)),
        // Dry run never changes the result.
        case("dry-run DENY does not deny", &["- {name: dry, namespace: shop, scope: Namespace, action: Deny, dryRun: true, rules: [[]]}"],
            WEB, 8080, (Allow, None, NoAllowPolicies)),
        case("dry-run ALLOW does not make others deny", &["- {name: dry, namespace: shop, scope: Namespace, action: Allow, dryRun: true, rules: [[[{destinationPorts: [1]}]]]}"],
            WEB, 8080, (Allow, None, NoAllowPolicies)),
        // STRICT expressed as a DENY policy.
        case("STRICT refuses plaintext", &[STRICT], PLAIN, 8080,
            (Deny, Some("istio-system/istio_converted_static_strict"), DenyMatched)),
        case("STRICT admits mTLS", &[STRICT], WEB, 8080, (Allow, None, NoAllowPolicies)),
        case("STRICT port-level PERMISSIVE exception", &[STRICT], PLAIN, 9999, (Allow, None, NoAllowPolicies)),
        case("STRICT plus ALLOW: mTLS still needs the ALLOW", &[STRICT, ALLOW_WEB], EVIL, 8080, (Deny, None, NoAllowMatched)),
        case("STRICT plus ALLOW: web", &[STRICT, ALLOW_WEB], WEB, 8080, (Allow, Some("shop/allow-web"), AllowMatched)),
    ];
    // Source CIDRs, including an IPv4 peer reported by a dual-stack socket.
    let cidr: &'static [&'static str] = &["- {name: lan, namespace: shop, scope: Namespace, action: Allow, rules: [[[{sourceIps: [10.1.0.0/16, 192.168.7.7]}]]]}"];
    for (src_ip, expect) in [
        ("10.1.2.3", (Allow, Some("shop/lan"), AllowMatched)),
        ("::ffff:10.1.2.3", (Allow, Some("shop/lan"), AllowMatched)),
        ("192.168.7.7", (Allow, Some("shop/lan"), AllowMatched)),
        ("10.2.0.1", (Deny, None, NoAllowMatched)),
    ] {
        v.push(Case {
            src_ip,
            ..case("source CIDR", cidr, PLAIN, 8080, expect)
        });
    }
    // Namespace-scoped policies follow the destination's namespace.
    v.push(Case {
        dst: "remote",
        ..case(
            "ALLOW of shop does not guard other",
            &[ALLOW_WEB],
            EVIL,
            8080,
            (Allow, None, NoAllowPolicies),
        )
    });
    v.push(Case {
        dst: "peer",
        ..case("bound ALLOW does not guard peer", &["- {name: bound-allow, namespace: shop, scope: WorkloadSelector, action: Allow, rules: [[[{destinationPorts: [1]}]]]}"],
            WEB, 8080, (Allow, None, NoAllowPolicies))
    });
    v
}

fn snapshot(policies: &[&str]) -> Snapshot {
    let yaml = format!("{WORKLOADS}policies:\n{}\n", policies.join("\n"));
    let yaml = if policies.is_empty() {
        WORKLOADS.to_string()
    } else {
        yaml
    };
    let model = LocalConfig::from_yaml(&yaml)
        .and_then(LocalConfig::into_model)
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    Snapshot::new(model)
}

#[test]
fn istio_semantics() {
    let mut failures = Vec::new();
    for c in cases() {
        let snap = snapshot(c.policies);
        let dst = snap
            .workloads()
            .find(|w| w.name == c.dst)
            .expect("destination workload");
        let conn = ConnInfo {
            src_ip: c.src_ip.parse::<IpAddr>().unwrap(),
            src_identity: c.from.map(|id| id.parse::<Identity>().unwrap()),
            dst_ip: dst.addresses[0],
            dst_port: c.dst_port,
        };
        let d = authorize(&snap, dst, &conn);
        let got = (d.verdict, d.policy.as_deref(), d.reason);
        let want = (c.expect, c.policy, c.reason);
        if got != want {
            failures.push(format!("{}: got {got:?}, want {want:?}", c.name));
        }
        assert_eq!(d.is_allowed(), c.expect == Allow);
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn decision_reads_well() {
    let snap = snapshot(&[STRICT]);
    let dst = snap.workloads().find(|w| w.name == "server").unwrap();
    let conn = ConnInfo {
        src_ip: "10.9.9.9".parse().unwrap(),
        src_identity: None,
        dst_ip: dst.addresses[0],
        dst_port: 80,
    };
    assert_eq!(
        authorize(&snap, dst, &conn).to_string(),
        "denied by DENY policy istio-system/istio_converted_static_strict"
    );
}

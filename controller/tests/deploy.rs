//! `deploy/amesh.yaml` against the controller: its ClusterRole lets the controller list and
//! watch every kind the Kubernetes source follows and create TokenReviews, the Deployment's
//! flags exist in the binary, the Service exposes the TLS port, and the ztunnel's token is
//! projected with the audience the controller reviews for.

use std::path::Path;
use std::process::Command;

use controller::ca::token_review::{DEFAULT_AUDIENCE, DEFAULT_NODE_AGENT};
use controller::source::kube::Kind;
use serde_yaml::Value;

fn documents() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/amesh.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("deploy/amesh.yaml has no {kind} {name}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a rule of `role` grants `verb` on `group`/`resource`.
fn allows(role: &Value, group: &str, resource: &str, verb: &str) -> bool {
    role["rules"].as_sequence().unwrap().iter().any(|rule| {
        strings(&rule["apiGroups"]).iter().any(|g| g == group)
            && strings(&rule["resources"]).iter().any(|r| r == resource)
            && strings(&rule["verbs"]).iter().any(|v| v == verb)
    })
}

#[test]
fn rbac_covers_what_the_controller_reads_and_reviews() {
    let docs = documents();
    let role = find(&docs, "ClusterRole", "amesh-controller");
    for kind in Kind::ALL {
        let resource = kind.api_resource();
        for verb in ["list", "watch"] {
            assert!(
                allows(role, &resource.group, &resource.plural, verb),
                "ClusterRole amesh-controller lacks {verb} on {}/{}",
                resource.group,
                resource.plural
            );
        }
    }
    assert!(allows(
        role,
        "authentication.k8s.io",
        "tokenreviews",
        "create"
    ));
    let binding = find(&docs, "ClusterRoleBinding", "amesh-controller");
    assert_eq!(binding["roleRef"]["name"], "amesh-controller");
    let deployment = find(&docs, "Deployment", "amesh-controller");
    let account = &deployment["spec"]["template"]["spec"]["serviceAccountName"];
    assert!(binding["subjects"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|s| &s["name"] == account && s["namespace"] == "istio-system"));
}

#[test]
fn controller_flags_exist_and_the_tls_port_is_served() {
    let docs = documents();
    let deployment = find(&docs, "Deployment", "amesh-controller");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let help = Command::new(env!("CARGO_BIN_EXE_amesh-controller"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let args = strings(&container["args"]);
    assert!(args.contains(&"--source=kube".to_owned()), "{args:?}");
    for arg in &args {
        let flag = arg.split('=').next().unwrap();
        assert!(
            help.contains(flag),
            "{flag} is not a flag of amesh-controller"
        );
    }
    let service = find(&docs, "Service", "amesh-controller");
    assert!(service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|p| p["port"].as_u64() == Some(15012)));
}

#[test]
fn ztunnel_token_is_for_the_audience_and_account_the_controller_accepts() {
    let docs = documents();
    let daemonset = find(&docs, "DaemonSet", "ztunnel");
    let pod = &daemonset["spec"]["template"]["spec"];
    let account = pod["serviceAccountName"].as_str().unwrap();
    let namespace = daemonset["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(
        format!("system:serviceaccount:{namespace}:{account}"),
        DEFAULT_NODE_AGENT
    );
    let projected = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find_map(|v| v["projected"]["sources"][0]["serviceAccountToken"].as_mapping())
        .expect("a projected ServiceAccount token");
    assert_eq!(
        projected.get("audience").and_then(Value::as_str),
        Some(DEFAULT_AUDIENCE)
    );
}

//! `deploy/amesh.yaml`'s ztunnel DaemonSet against ztunnel's configuration: its environment
//! parses (Istio's variable names, a TLS control plane), the files it names — the mesh root
//! and the projected token — lie under volumes the DaemonSet mounts, and eBPF capture's pins
//! go to the host's bpffs.

use std::collections::HashMap;
use std::path::Path;

use serde_yaml::Value;
use ztunnel::config::{CaSource, Config, ConfigSource};

fn daemonset() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/amesh.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let found = serde_yaml::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|d| d["kind"] == "DaemonSet" && d["metadata"]["name"] == "ztunnel");
    found.expect("a ztunnel DaemonSet")
}

#[test]
fn daemonset_environment_is_a_valid_ztunnel_config() {
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mounts: Vec<(String, String)> = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["mountPath"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mounted = |file: &str| {
        mounts
            .iter()
            .find(|(_, dir)| Path::new(file).parent() == Some(Path::new(dir)))
            .map(|(name, _)| name.clone())
            .unwrap_or_else(|| panic!("{file} is not under a mounted volume"))
    };
    let mut env = HashMap::new();
    for var in container["env"].as_sequence().unwrap() {
        let name = var["name"].as_str().unwrap().to_owned();
        // Downward-API values: what the kubelet would fill in.
        let value = match var["value"].as_str() {
            Some(v) => v.to_owned(),
            None => match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("spec.nodeName") => "node-1".into(),
                Some("status.podIP") => "10.0.0.5".into(),
                Some(other) => format!("value-of-{other}"),
                None => panic!("{name} has neither value nor fieldRef"),
            },
        };
        env.insert(name, value);
    }

    // The token: where Istio's ztunnel (and so ours, with no setting) reads it, under the
    // projected volume, with the file name the projection writes.
    assert!(
        !env.contains_key("AMESH_TOKEN_FILE") && !env.contains_key("AMESH_TOKEN"),
        "the DaemonSet should rely on Istio's default token path"
    );
    let token_file = ztunnel::config::ISTIO_TOKEN_PATH.to_string();
    let volume = mounted(&token_file);
    let projected = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == volume.as_str())
        .unwrap();
    let file_name = Path::new(&token_file)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(
        projected["projected"]["sources"][0]["serviceAccountToken"]["path"],
        file_name
    );
    // The root: under the ConfigMap volume.
    let root = env["XDS_ROOT_CA"].clone();
    let volume = mounted(&root);
    assert!(pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|v| v["name"] == volume.as_str() && v["configMap"]["name"] == "istio-ca-root-cert"));

    // The CNI plugin and ztunnel meet at one socket path, on a volume the DaemonSet mounts
    // from the node (where the runtime runs the plugin).
    let socket = env
        .get("AMESH_CNI_SOCKET")
        .cloned()
        .unwrap_or_else(|| ztunnel::cni::DEFAULT_SOCKET.to_string());
    assert_eq!(socket, ztunnel::cni::DEFAULT_SOCKET);
    let volume = mounted(&socket);
    assert!(pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|v| v["name"] == volume.as_str() && v["hostPath"]["path"].is_string()));

    // ztunnel reads the token at start: give it one where the kubelet would.
    let dir = tempfile::tempdir().unwrap();
    let local_token = dir.path().join("istio-token");
    std::fs::write(&local_token, "token").unwrap();
    env.insert("AMESH_TOKEN_FILE".into(), local_token.display().to_string());
    let config = Config::from_map(&env).expect("the DaemonSet's environment parses");
    assert_eq!(config.node_name, "node-1");
    assert!(matches!(
        config.config_source,
        ConfigSource::Xds { ref address, root: Some(ref r), .. }
            if address.starts_with("https://") && r == Path::new(&root)
    ));
    assert!(matches!(config.ca, CaSource::Remote { root: Some(_), .. }));
    assert_eq!(config.token.as_deref(), Some("token"));

    // Capture: eBPF where the node allows, its links pinned on the host's bpffs, so a
    // restarted container finds them (a mount of its own would vanish with the old one).
    assert_eq!(config.capture, ztunnel::capture::CaptureMode::Auto);
    assert!(config.bpf_pin_dir.starts_with("/sys/fs/bpf"));
    let bpffs = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/sys/fs/bpf")
        .expect("/sys/fs/bpf is mounted");
    assert_eq!(bpffs["mountPropagation"], "Bidirectional");
    assert!(pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|v| v["name"] == bpffs["name"] && v["hostPath"]["path"] == "/sys/fs/bpf"));
}

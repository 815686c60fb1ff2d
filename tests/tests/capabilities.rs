//! ztunnel runs with exactly the capabilities its DaemonSet grants, and the lab proves that
//! set is enough: every lab ztunnel is started as root with only `lab::caps::ZTUNNEL_CAPS`
//! (so the whole e2e suite runs that way), this scenario checks the kernel's view of each
//! ztunnel process, and a check without a lab compares the set with what
//! `kubectl kustomize deploy/` (the base and every overlay) grants ztunnel's container.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::{addr, capture_mode, MeshLab};
use lab::caps::{self, CapSet};

/// The set the lab grants for `capture_mode`, as a set of names.
fn lab_set(capture_mode: &str) -> BTreeSet<String> {
    caps::granted(capture_mode)
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn every_ztunnel_runs_with_exactly_the_granted_capabilities() {
    let mut m = MeshLab::up("l4", 2);
    let want = caps::ztunnel_caps(&capture_mode()).expect("the lab's capability set");
    for node in ["node1", "node2"] {
        let pid = m.ztunnel_pid(node);
        for field in ["CapEff", "CapPrm", "CapBnd"] {
            let got = caps::of_process(pid, field).expect("ztunnel's /proc status");
            assert_eq!(
                got,
                want,
                "{node}'s ztunnel (pid {pid}) {field} is {:?}, not {:?}",
                got.names(),
                want.names()
            );
        }
        for field in ["CapInh", "CapAmb"] {
            assert_eq!(caps::of_process(pid, field), Some(CapSet(0)), "{field}");
        }
        // allowPrivilegeEscalation: false.
        assert_eq!(caps::no_new_privs(pid), Some(true), "{node}'s NoNewPrivs");
    }
    // And with them it captures and tunnels: a cross-node call over HBONE.
    let server: SocketAddr = addr(m.ip("server-2"), 8080);
    let echoed = m.echo("client-a", server, b"caps").expect("meshed echo");
    assert_eq!(echoed, b"caps");
    // A ztunnel restarted by the lab (an upgrade) gets the same set, not the lab's own.
    let stopped = lab::ztunnels::stop(m.lab.state(), "node1", Duration::from_secs(30))
        .expect("stop node1's ztunnel");
    assert!(stopped.drained, "ztunnel did not exit on SIGTERM");
    let started = lab::ztunnels::start(&mut m.lab, "node1", None).expect("start it again");
    assert_eq!(caps::of_process(started.pid, "CapEff"), Some(want));
    assert_eq!(caps::of_process(started.pid, "CapBnd"), Some(want));
}

/// `kubectl kustomize <dir>`'s output.
fn render(dir: &Path) -> String {
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 YAML")
}

/// The securityContext of the container that runs ztunnel in the DaemonSet `ztunnel`, and
/// how it captures: its `CAPTURE_MODE` (empty: unset), or `zds` when istio-cni captures for it
/// (`INPOD_UDS`).
fn ztunnel_security(yaml: &str, dir: &Path) -> (serde_yaml::Value, String) {
    // kubectl separates the rendered objects with `---` lines.
    for doc in yaml.split("\n---\n") {
        let obj: serde_yaml::Value = serde_yaml::from_str(doc).expect("rendered YAML parses");
        if obj["kind"] != "DaemonSet" || obj["metadata"]["name"] != "ztunnel" {
            continue;
        }
        let containers = obj["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .cloned()
            .unwrap_or_default();
        let runs_ztunnel = |c: &serde_yaml::Value| {
            let image = c["image"].as_str().unwrap_or_default();
            c["name"] == "istio-proxy" || image.contains("ztunnel")
        };
        let container = containers
            .iter()
            .find(|c| runs_ztunnel(c))
            .unwrap_or_else(|| panic!("{}: no ztunnel container", dir.display()));
        let env = |name: &str| {
            (container["env"].as_sequence().into_iter().flatten())
                .find(|e| e["name"] == name)
                .map(|e| e["value"].as_str().unwrap_or_default().to_string())
        };
        let mode = match env("INPOD_UDS") {
            Some(_) => "zds".to_string(),
            None => env("CAPTURE_MODE").unwrap_or_default(),
        };
        return (container["securityContext"].clone(), mode);
    }
    panic!("{}: no DaemonSet ztunnel", dir.display());
}

fn names(v: &serde_yaml::Value) -> BTreeSet<String> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str())
        .map(|s| s.trim_start_matches("CAP_").to_ascii_uppercase())
        .collect()
}

#[test]
fn the_daemonset_grants_what_the_lab_runs_with() {
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut dirs = vec![deploy.clone()];
    if let Ok(overlays) = std::fs::read_dir(deploy.join("overlays")) {
        let mut more: Vec<PathBuf> = overlays.filter_map(Result::ok).map(|e| e.path()).collect();
        more.sort();
        dirs.extend(more);
    }
    for dir in dirs {
        let (sc, mode) = ztunnel_security(&render(&dir), &dir);
        assert_ne!(
            sc["privileged"].as_bool(),
            Some(true),
            "{}: ztunnel is privileged",
            dir.display()
        );
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{}: ztunnel may escalate, the lab's ztunnels run with no_new_privs",
            dir.display()
        );
        assert!(
            names(&sc["capabilities"]["drop"]).contains("ALL"),
            "{}: ztunnel does not drop ALL: {sc:?}",
            dir.display()
        );
        assert_eq!(
            names(&sc["capabilities"]["add"]),
            lab_set(&mode),
            "{}: ztunnel's added capabilities differ from lab::caps::granted({mode:?}), with \
             which the e2e suite runs",
            dir.display()
        );
    }
}

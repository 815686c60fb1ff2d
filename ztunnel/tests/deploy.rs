//! The ztunnel DaemonSet of the rendered deploy/ kustomization (the base and every overlay,
//! `kubectl kustomize`) against ztunnel's configuration: its environment parses (Istio's
//! variable names, a TLS control plane) and every variable it sets is one ztunnel reads; the
//! files it names (the mesh root, the projected token, the CNI or ZDS socket, the state file)
//! lie under volumes the DaemonSet mounts; each overlay gets the capture it promises, eBPF
//! capture's pins go to the host's bpffs; the probes hit ztunnel's ports; the pod outlives
//! ztunnel's drain; the CNI installer's flags are `amesh-cni install`'s and its directories
//! are the node's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;
use ztunnel::capture::CaptureMode;
use ztunnel::config::{CaSource, Config, ConfigSource};

/// The kustomizations a cluster may be given: deploy/ itself and each overlay.
const RENDERINGS: [&str; 4] = [
    ".",
    "overlays/ebpf",
    "overlays/istio-cni",
    "overlays/lab-images",
];

/// What the DaemonSet grants ztunnel on top of nothing (`drop: [ALL]`), by rendering: the
/// lab's set for that capture mode (`lab::caps::granted`), the one the e2e suite runs with.
/// Entering pod network namespaces, mounting and pinning on bpffs and bpf() (CAP_SYS_ADMIN),
/// listeners with IP_TRANSPARENT and SO_MARK, nft and policy routes, attaching sk_lookup
/// (CAP_NET_ADMIN); with eBPF capture also DNS answers from port 53 (CAP_NET_BIND_SERVICE).
/// istio-cni's pods are captured by Istio's agent, as the base's are by nft.
fn capabilities(dir: &str) -> Vec<&'static str> {
    let mode = if dir == "overlays/ebpf" {
        "ebpf"
    } else {
        "nft"
    };
    let mut caps = lab::caps::granted(mode);
    caps.sort();
    caps
}

/// `kubectl kustomize deploy/<dir>`'s ztunnel DaemonSet.
fn daemonset(dir: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(dir);
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("running {kubectl} kustomize (scripts/setup.sh installs kubectl): {e}")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let found = serde_yaml::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|d| d["kind"] == "DaemonSet" && d["metadata"]["name"] == "ztunnel");
    found.unwrap_or_else(|| panic!("deploy/{dir} renders no ztunnel DaemonSet"))
}

/// One rendering's DaemonSet, read the way the kubelet would run it.
struct Rendered {
    dir: &'static str,
    ds: Value,
}

impl Rendered {
    fn new(dir: &'static str) -> Rendered {
        Rendered {
            dir,
            ds: daemonset(dir),
        }
    }

    fn pod(&self) -> &Value {
        &self.ds["spec"]["template"]["spec"]
    }

    fn container(&self, name: &str) -> Option<&Value> {
        self.pod()["containers"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
    }

    fn ztunnel(&self) -> &Value {
        self.container("istio-proxy")
            .unwrap_or_else(|| panic!("deploy/{}: no istio-proxy container", self.dir))
    }

    fn volume(&self, name: &str) -> &Value {
        self.pod()["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("deploy/{}: no volume {name}", self.dir))
    }

    /// The volume mounted at `file`'s directory in `container`, by name.
    fn mounted(&self, container: &Value, file: &Path) -> &Value {
        let mount = container["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| file.parent() == Some(Path::new(m["mountPath"].as_str().unwrap())))
            .unwrap_or_else(|| {
                panic!(
                    "deploy/{}: {} is not under a mounted volume",
                    self.dir,
                    file.display()
                )
            });
        self.volume(mount["name"].as_str().unwrap())
    }

    /// The host directory mounted at `file`'s directory.
    fn host_dir_of(&self, container: &Value, file: &Path) -> PathBuf {
        let volume = self.mounted(container, file);
        PathBuf::from(volume["hostPath"]["path"].as_str().unwrap_or_else(|| {
            panic!(
                "deploy/{}: {} is not on a host path",
                self.dir,
                file.display()
            )
        }))
    }

    /// ztunnel's environment, downward-API values filled in as the kubelet would.
    fn env(&self) -> HashMap<String, String> {
        let mut env = HashMap::new();
        for var in self.ztunnel()["env"].as_sequence().unwrap() {
            let name = var["name"].as_str().unwrap().to_owned();
            let value = match var["value"].as_str() {
                Some(v) => v.to_owned(),
                None => match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("spec.nodeName") => "node-1".into(),
                    Some("status.podIP") => "10.0.0.5".into(),
                    Some(other) => format!("value-of-{other}"),
                    None => panic!("deploy/{}: {name} has neither value nor fieldRef", self.dir),
                },
            };
            env.insert(name, value);
        }
        env
    }

    /// ztunnel's configuration from that environment and the token file `token`.
    fn config(&self, env: &HashMap<String, String>, token: &Path) -> Result<Config, String> {
        let mut env = env.clone();
        env.insert("AMESH_TOKEN_FILE".into(), token.display().to_string());
        Config::from_map(&env).map_err(|e| e.to_string())
    }
}

/// A token where the kubelet would project one (ztunnel reads it at start), in `dir`.
fn token_in(dir: &tempfile::TempDir) -> PathBuf {
    let token = dir.path().join("istio-token");
    std::fs::write(&token, "token").unwrap();
    token
}

fn renderings() -> Vec<Rendered> {
    RENDERINGS.into_iter().map(Rendered::new).collect()
}

#[test]
fn daemonset_environment_is_a_valid_ztunnel_config() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_in(&dir);
    for r in renderings() {
        let env = r.env();
        let ztunnel = r.ztunnel();

        // The token: where Istio's ztunnel (and so ours, with no setting) reads it, under the
        // projected volume, with the file name the projection writes.
        assert!(
            !env.contains_key("AMESH_TOKEN_FILE") && !env.contains_key("AMESH_TOKEN"),
            "deploy/{}: the DaemonSet should rely on Istio's default token path",
            r.dir
        );
        let token_file = Path::new(ztunnel::config::ISTIO_TOKEN_PATH);
        let projected = r.mounted(ztunnel, token_file);
        assert_eq!(
            projected["projected"]["sources"][0]["serviceAccountToken"]["path"],
            token_file.file_name().unwrap().to_str().unwrap()
        );
        // The root: under the ConfigMap volume.
        let root = PathBuf::from(&env["XDS_ROOT_CA"]);
        assert_eq!(
            r.mounted(ztunnel, &root)["configMap"]["name"],
            "istio-ca-root-cert"
        );

        let config = r
            .config(&env, &token)
            .expect("the DaemonSet's environment parses");
        assert_eq!(config.node_name, "node-1");
        assert!(matches!(
            config.config_source,
            ConfigSource::Xds { ref address, root: Some(ref r), .. }
                if address.starts_with("https://") && *r == root
        ));
        assert!(matches!(config.ca, CaSource::Remote { root: Some(_), .. }));
        assert_eq!(config.token.as_deref(), Some("token"));

        match config.inpod_uds.as_deref() {
            // Pods from amesh-cni: the plugin (run by the runtime on the node) and ztunnel
            // meet at one socket on a host directory; the state file outlives the container
            // there too, and the pods' namespaces the runtime names are visible.
            None => {
                assert_ne!(r.dir, "overlays/istio-cni");
                assert_eq!(
                    config.cni_socket,
                    Path::new(ztunnel::cni::DEFAULT_SOCKET),
                    "deploy/{}",
                    r.dir
                );
                r.host_dir_of(ztunnel, &config.cni_socket);
                r.host_dir_of(ztunnel, &config.state_file);
                let netns = r.host_dir_of(ztunnel, Path::new("/var/run/netns/pod"));
                assert_eq!(netns, Path::new("/var/run/netns"));
                assert!(r.container("install-cni").is_some(), "deploy/{}", r.dir);
            }
            // Pods from istio-cni: its socket, where Istio puts it, on the node's directory
            // istio-cni shares; amesh-cni is not installed.
            Some(socket) => {
                assert_eq!(r.dir, "overlays/istio-cni");
                assert_eq!(socket, Path::new(ztunnel::zds::DEFAULT_SOCKET));
                assert_eq!(
                    r.host_dir_of(ztunnel, socket),
                    Path::new(ztunnel::zds::DEFAULT_SOCKET).parent().unwrap()
                );
                assert!(r.container("install-cni").is_none());
            }
        }
    }
}

/// Each variable the DaemonSet sets changes what ztunnel does: a rename in ztunnel's
/// configuration leaves the DaemonSet's setting without effect, and fails here.
#[test]
fn every_variable_the_daemonset_sets_is_read_by_ztunnel() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_in(&dir);
    // Read outside `Config`, where the xDS node is built (as Istio's ztunnel, the pod's IP).
    let run = include_str!("../src/run.rs");
    for r in renderings() {
        let env = r.env();
        let base = format!("{:?}", r.config(&env, &token));
        for name in env.keys() {
            if name == "INSTANCE_IP" {
                assert!(run.contains("\"INSTANCE_IP\""), "ztunnel reads INSTANCE_IP");
                continue;
            }
            // Another value (an invalid one is an error: a change too).
            let mut changed = env.clone();
            changed.get_mut(name).unwrap().push('x');
            assert_ne!(
                format!("{:?}", r.config(&changed, &token)),
                base,
                "deploy/{}: ztunnel does not read {name}",
                r.dir
            );
        }
    }
}

#[test]
fn each_rendering_captures_as_it_promises() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_in(&dir);
    for r in renderings() {
        let config = r.config(&r.env(), &token).unwrap();
        let bpffs = r.ztunnel()["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == ztunnel::capture::links::BPFFS);
        match r.dir {
            // nft needs nothing of the node; with no bpffs of the host's, eBPF's pins would
            // die with the container, so the base never tries it.
            "." | "overlays/lab-images" => {
                assert_eq!(config.capture, CaptureMode::Nft, "deploy/{}", r.dir);
                assert!(bpffs.is_none(), "deploy/{}", r.dir);
            }
            // istio-cni redirects; ztunnel's own mode is unused.
            "overlays/istio-cni" => assert!(config.inpod_uds.is_some()),
            // eBPF, its links pinned on the host's bpffs, seen by the container (the host's
            // mount must exist: HostToContainer, since Bidirectional needs privileged), and
            // an AppArmor profile that lets it write there.
            "overlays/ebpf" => {
                assert_eq!(config.capture, CaptureMode::Ebpf);
                assert!(config
                    .bpf_pin_dir
                    .starts_with(ztunnel::capture::links::BPFFS));
                let mount = bpffs.expect("the ebpf overlay mounts /sys/fs/bpf");
                assert_eq!(mount["mountPropagation"], "HostToContainer");
                let volume = r.volume(mount["name"].as_str().unwrap());
                assert_eq!(volume["hostPath"]["path"], ztunnel::capture::links::BPFFS);
                assert_eq!(
                    r.ztunnel()["securityContext"]["appArmorProfile"]["type"],
                    "Unconfined"
                );
            }
            other => panic!("no expectation for deploy/{other}"),
        }
    }
}

/// Exactly [`capabilities`] added, everything else dropped, root without `privileged`; the
/// installer gets nothing. The lab runs ztunnel with the same set (read from this rendering).
#[test]
fn ztunnel_runs_with_exactly_its_capabilities() {
    for r in renderings() {
        let context = &r.ztunnel()["securityContext"];
        assert_ne!(context["privileged"], true);
        assert_eq!(context["runAsUser"], 0);
        assert_eq!(context["readOnlyRootFilesystem"], true);
        assert_eq!(context["allowPrivilegeEscalation"], false);
        assert_eq!(context["capabilities"]["drop"][0], "ALL");
        let mut added: Vec<&str> = context["capabilities"]["add"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        added.sort();
        assert_eq!(added, capabilities(r.dir), "deploy/{}", r.dir);
        assert_eq!(
            r.pod()["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        if let Some(installer) = r.container("install-cni") {
            let context = &installer["securityContext"];
            assert_eq!(context["capabilities"]["drop"][0], "ALL");
            assert!(context["capabilities"]["add"].is_null());
            assert_eq!(context["allowPrivilegeEscalation"], false);
        }
    }
}

/// Probes on ztunnel's own ports; a rolling update one node at a time, high priority, and a
/// grace period that covers the drain.
#[test]
fn probes_rollout_and_grace_fit_ztunnel() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_in(&dir);
    for r in renderings() {
        let config = r.config(&r.env(), &token).unwrap();
        let ztunnel = r.ztunnel();
        let port = |probe: &str| ztunnel[probe]["httpGet"]["port"].as_u64().unwrap();
        let port_of = |addr: SocketAddr| u64::from(addr.port());
        assert_eq!(port("readinessProbe"), port_of(config.readiness_addr));
        assert_eq!(
            ztunnel["readinessProbe"]["httpGet"]["path"],
            "/healthz/ready"
        );
        assert_eq!(port("livenessProbe"), port_of(config.stats_addr));
        assert_eq!(
            ztunnel["livenessProbe"]["httpGet"]["path"],
            "/stats/prometheus"
        );
        for part in ["requests", "limits"] {
            assert!(ztunnel["resources"][part]["memory"].is_string());
        }
        assert_eq!(r.pod()["priorityClassName"], "system-node-critical");
        let update = &r.ds["spec"]["updateStrategy"];
        assert_eq!(update["type"], "RollingUpdate");
        assert_eq!(update["rollingUpdate"]["maxUnavailable"], 1);
        let grace = r.pod()["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            grace > config.drain_deadline.as_secs() * 2,
            "deploy/{}: {grace} s of grace for a {:?} drain",
            r.dir,
            config.drain_deadline
        );
    }
}

/// The installer container runs `amesh-cni install` with flags the binary has, into the
/// node's CNI directories, from the image that carries ztunnel, and is ready when
/// `amesh-cni install --check` finds its work done there.
#[test]
fn cni_installer_runs_amesh_cni_install_into_the_nodes_directories() {
    let help = Command::new(env!("CARGO_BIN_EXE_amesh-cni"))
        .args(["install", "--help"])
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    let help =
        String::from_utf8_lossy(&help.stdout).into_owned() + &String::from_utf8_lossy(&help.stderr);
    let flags: Vec<&str> = help
        .split_whitespace()
        .map(|w| w.trim_end_matches(','))
        .filter(|w| w.starts_with("--"))
        .collect();
    for r in renderings() {
        let Some(installer) = r.container("install-cni") else {
            continue;
        };
        assert_eq!(installer["image"], r.ztunnel()["image"]);
        assert!(installer["command"][0]
            .as_str()
            .unwrap()
            .ends_with("/amesh-cni"));
        let args: Vec<&str> = installer["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(args[0], "install");
        // The chain outlives a restart: pods starting during an upgrade wait for ztunnel.
        assert!(!args.contains(&"--uninstall-on-exit"));
        for arg in &args[1..] {
            let flag = arg.split('=').next().unwrap();
            assert!(
                flags.contains(&flag),
                "{flag} is not a flag of amesh-cni install:\n{help}"
            );
        }
        // Its readiness: the same binary and directories, checking.
        let probe: Vec<&str> = installer["readinessProbe"]["exec"]["command"]
            .as_sequence()
            .expect("the installer has a readiness probe")
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(probe[0], installer["command"][0].as_str().unwrap());
        assert_eq!(probe[1], "install");
        assert!(probe.contains(&"--check"));
        for arg in &probe[2..] {
            let flag = arg.split('=').next().unwrap();
            assert!(
                flags.contains(&flag),
                "{flag} is not a flag of amesh-cni install"
            );
            if flag != "--check" {
                assert!(
                    args.contains(arg),
                    "the probe checks where the installer installs"
                );
            }
        }
        for (flag, host) in [
            ("--cni-bin-dir", "/opt/cni/bin"),
            ("--cni-conf-dir", "/etc/cni/net.d"),
        ] {
            let dir = args
                .iter()
                .find_map(|a| a.strip_prefix(&format!("{flag}=")))
                .unwrap_or_else(|| panic!("deploy/{}: {flag} is given", r.dir));
            assert_eq!(
                r.host_dir_of(installer, &Path::new(dir).join("file")),
                Path::new(host)
            );
        }
    }
}

//! The rendered deploy/ kustomization (the base and every overlay, `kubectl kustomize`) against
//! the controller: its ClusterRole lets the controller list and watch every kind the Kubernetes
//! source follows and create TokenReviews; a Role in the CA Secret's namespace lets it read and
//! create that Secret and read, create and update the root ConfigMap, and nothing more on
//! Secrets; the Deployment's flags and environment variables are the binary's, the Service
//! exposes the TLS port, ztunnel mounts the ConfigMap the controller publishes, and its token is
//! projected with the audience the controller reviews for. For waypoints: the ClusterRole lets
//! the deployer apply ServiceAccounts, Services and Deployments, publish the root ConfigMap and
//! write Gateway status anywhere; the waypoint's control address is the controller's Service
//! under a name its certificate holds. The images are the workspace version's, under the names
//! each rendering promises; a PodDisruptionBudget covers the controller;
//! `gateway-api-crds.yaml` serves every Gateway API kind the controller reads, with the status
//! subresource the deployer writes, and amesh's own CRDs are in every rendering.

use std::path::{Path, PathBuf};
use std::process::Command;

use controller::ca::root_configmap::{DEFAULT_ROOT_NAMESPACE, ROOT_CONFIGMAP};
use controller::ca::root_secret::{ObjectName, DEFAULT_CA_SECRET};
use controller::ca::token_review::{DEFAULT_AUDIENCE, DEFAULT_NODE_AGENT};
use controller::deployer::DEFAULT_CONTROL_ADDRESS;
use controller::source::kube::Kind;
use serde_yaml::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The kustomizations a cluster may be given: deploy/ itself and each overlay.
const RENDERINGS: [&str; 4] = [
    ".",
    "overlays/ebpf",
    "overlays/istio-cni",
    "overlays/lab-images",
];

/// `kubectl kustomize deploy/<dir>`: the objects `kubectl apply -k` would send.
fn render(dir: &str) -> Vec<Value> {
    let path = deploy_dir().join(dir);
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
    parse(&String::from_utf8(out.stdout).unwrap())
}

fn parse(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|d: &Value| !d.is_null())
        .collect()
}

/// Every rendering, named for failure messages.
fn renderings() -> Vec<(&'static str, Vec<Value>)> {
    RENDERINGS.iter().map(|d| (*d, render(d))).collect()
}

/// A file of deploy/ that kustomize does not apply (the Gateway API CRDs for clusters
/// without upstream's).
fn documents_of(file: &str) -> Vec<Value> {
    parse(&std::fs::read_to_string(deploy_dir().join(file)).unwrap())
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the rendered deploy/ has no {kind} {name}"))
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
    rules_for(role, group, resource)
        .any(|rule| strings(&rule["resourceNames"]).is_empty() && grants(rule, verb))
}

/// Whether a rule of `role` grants `verb` on the object `name` of `group`/`resource`.
fn allows_named(role: &Value, group: &str, resource: &str, verb: &str, name: &str) -> bool {
    rules_for(role, group, resource).any(|rule| {
        let names = strings(&rule["resourceNames"]);
        (names.is_empty() || names.iter().any(|n| n == name)) && grants(rule, verb)
    })
}

/// Every verb `role` grants on `group`/`resource`, whatever the names.
fn verbs_on(role: &Value, group: &str, resource: &str) -> Vec<String> {
    let mut verbs: Vec<String> = rules_for(role, group, resource)
        .flat_map(|rule| strings(&rule["verbs"]))
        .collect();
    verbs.sort();
    verbs.dedup();
    verbs
}

fn rules_for<'a>(
    role: &'a Value,
    group: &'a str,
    resource: &'a str,
) -> impl Iterator<Item = &'a Value> + 'a {
    role["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(move |rule| {
            strings(&rule["apiGroups"]).iter().any(|g| g == group)
                && strings(&rule["resources"])
                    .iter()
                    .any(|r| r == resource || r == "*")
        })
}

fn grants(rule: &Value, verb: &str) -> bool {
    strings(&rule["verbs"])
        .iter()
        .any(|v| v == verb || v == "*")
}

/// The value of `--flag=value` in the controller's args, or `default`.
fn flag(args: &[String], flag: &str, default: &str) -> String {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("{flag}=")))
        .unwrap_or(default)
        .to_owned()
}

#[test]
fn rbac_covers_what_the_controller_reads_and_reviews() {
    for (rendering, docs) in renderings() {
        eprintln!("checking deploy/{rendering}");
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
}

#[test]
fn rbac_covers_the_ca_secret_and_root_configmap_and_no_more_secrets() {
    for (rendering, docs) in renderings() {
        eprintln!("checking deploy/{rendering}");
        let deployment = find(&docs, "Deployment", "amesh-controller");
        let pod = &deployment["spec"]["template"]["spec"];
        let account = pod["serviceAccountName"].as_str().unwrap();
        let args = strings(&pod["containers"][0]["args"]);
        let secret: ObjectName = flag(&args, "--ca-secret", DEFAULT_CA_SECRET)
            .parse()
            .unwrap();
        let root_namespace = flag(&args, "--root-namespace", DEFAULT_ROOT_NAMESPACE);

        // The Role (and its binding to the controller) in a namespace, by name.
        let role_in = |namespace: &str| {
            let binding = docs
                .iter()
                .find(|d| {
                    d["kind"] == "RoleBinding"
                        && d["metadata"]["namespace"] == namespace
                        && d["subjects"].as_sequence().unwrap().iter().any(|s| {
                            s["kind"] == "ServiceAccount"
                                && s["name"] == account
                                && s["namespace"] == "istio-system"
                        })
                })
                .unwrap_or_else(|| panic!("no RoleBinding for {account} in {namespace}"));
            assert_eq!(binding["roleRef"]["kind"], "Role");
            docs.iter()
                .find(|d| {
                    d["kind"] == "Role"
                        && d["metadata"]["namespace"] == namespace
                        && d["metadata"]["name"] == binding["roleRef"]["name"]
                })
                .unwrap_or_else(|| {
                    panic!("no Role {:?} in {namespace}", binding["roleRef"]["name"])
                })
        };
        let role = role_in(&secret.namespace);
        assert!(
            allows_named(role, "", "secrets", "get", &secret.name),
            "get on {secret}"
        );
        assert!(allows(role, "", "secrets", "create"), "create on secrets");
        assert_eq!(
            verbs_on(role, "", "secrets"),
            ["create", "get"],
            "only what the CA Secret needs"
        );
        assert!(
            !allows_named(role, "", "secrets", "get", "cacerts"),
            "the Role reads no other Secret (cacerts is mounted, not read)"
        );
        let role = role_in(&root_namespace);
        for verb in ["get", "update"] {
            assert!(
                allows_named(role, "", "configmaps", verb, ROOT_CONFIGMAP),
                "{verb} on {root_namespace}/{ROOT_CONFIGMAP}"
            );
        }
        assert!(allows(role, "", "configmaps", "create"));
        let cluster_role = find(&docs, "ClusterRole", "amesh-controller");
        assert!(
            verbs_on(cluster_role, "", "secrets").is_empty(),
            "no Secret access cluster-wide"
        );

        // ztunnel runs in the root namespace and mounts the ConfigMap published there; the
        // plug-in cacerts Secret is optional.
        let daemonset = find(&docs, "DaemonSet", "ztunnel");
        assert_eq!(daemonset["metadata"]["namespace"], root_namespace.as_str());
        let volumes = daemonset["spec"]["template"]["spec"]["volumes"]
            .as_sequence()
            .unwrap();
        assert!(volumes
            .iter()
            .any(|v| v["configMap"]["name"] == ROOT_CONFIGMAP));
        let cacerts = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["secret"]["secretName"] == "cacerts")
            .expect("the plug-in cacerts volume");
        assert_eq!(cacerts["secret"]["optional"], true, "cacerts is optional");
    }
}

#[test]
fn controller_flags_exist_and_the_tls_port_is_served() {
    for (rendering, docs) in renderings() {
        eprintln!("checking deploy/{rendering}");
        let deployment = find(&docs, "Deployment", "amesh-controller");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let help = Command::new(env!("CARGO_BIN_EXE_amesh-controller"))
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        let args = strings(&container["args"]);
        assert!(args.contains(&"--source=kube".to_owned()), "{args:?}");
        let flags: Vec<&str> = help
            .split_whitespace()
            .map(|w| w.trim_end_matches(','))
            .filter(|w| w.starts_with("--"))
            .collect();
        for arg in &args {
            let flag = arg.split('=').next().unwrap();
            assert!(
                flags.contains(&flag),
                "{flag} is not a flag of amesh-controller"
            );
        }
        // Settings given as environment variables are the ones clap reads for a flag.
        for var in container["env"].as_sequence().unwrap() {
            let name = var["name"].as_str().unwrap();
            assert!(
                help.contains(&format!("[env: {name}=")),
                "amesh-controller reads no environment variable {name}"
            );
        }
        let service = find(&docs, "Service", "amesh-controller");
        assert!(service["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p["port"].as_u64() == Some(15012)));
        // The debug listener `amesh status` reads is on, on the port the container declares
        // (the API server's pod proxy needs no Service, only the pod's port).
        let debug: std::net::SocketAddr = flag(&args, "--debug-addr", "off")
            .parse()
            .expect("--debug-addr is an address in the deployment");
        assert!(
            container["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|p| p["containerPort"].as_u64() == Some(u64::from(debug.port()))),
            "the debug port {} is not a container port",
            debug.port()
        );
    }
}

#[test]
fn ztunnel_token_is_for_the_audience_and_account_the_controller_accepts() {
    for (rendering, docs) in renderings() {
        eprintln!("checking deploy/{rendering}");
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
}

#[test]
fn rbac_lets_the_controller_deploy_waypoints_in_any_namespace() {
    for (rendering, docs) in renderings() {
        eprintln!("checking deploy/{rendering}");
        let role = find(&docs, "ClusterRole", "amesh-controller");
        // Server-side apply is a patch (which creates when absent); reads tell the controller's
        // objects from someone else's. The rest is what an operator of the objects may need.
        for (group, resource) in [
            ("", "serviceaccounts"),
            ("", "services"),
            ("apps", "deployments"),
        ] {
            for verb in [
                "get", "list", "watch", "create", "update", "patch", "delete",
            ] {
                assert!(
                    allows(role, group, resource, verb),
                    "ClusterRole amesh-controller lacks {verb} on {group}/{resource}"
                );
            }
        }
        for verb in ["update", "patch"] {
            assert!(
                allows(role, "gateway.networking.k8s.io", "gateways/status", verb),
                "{verb} on gateways/status"
            );
        }
        // The root the waypoint mounts, in the waypoint's namespace: that ConfigMap by name, plus
        // create (which RBAC cannot limit by name), and no other ConfigMap.
        for verb in ["get", "update"] {
            assert!(allows_named(role, "", "configmaps", verb, ROOT_CONFIGMAP));
            assert!(!allows_named(role, "", "configmaps", verb, "someone-elses"));
        }
        assert!(allows(role, "", "configmaps", "create"));
        assert!(
            verbs_on(role, "", "secrets").is_empty(),
            "still no Secret access cluster-wide"
        );
    }
}

#[test]
fn waypoints_reach_the_controller_service_by_a_name_its_certificate_holds() {
    for (rendering, docs) in renderings() {
        eprintln!("checking deploy/{rendering}");
        let deployment = find(&docs, "Deployment", "amesh-controller");
        let args = strings(&deployment["spec"]["template"]["spec"]["containers"][0]["args"]);
        let address = flag(&args, "--waypoint-control-address", DEFAULT_CONTROL_ADDRESS);
        let authority = address
            .strip_prefix("https://")
            .expect("waypoints reach the controller over TLS");
        let (host, port) = authority.rsplit_once(':').unwrap();
        let service = find(&docs, "Service", "amesh-controller");
        assert_eq!(
            host,
            format!(
                "amesh-controller.{}.svc",
                service["metadata"]["namespace"].as_str().unwrap()
            )
        );
        assert!(service["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p["port"].as_u64() == port.parse().ok()));
        let sans: Vec<String> = args
            .iter()
            .filter_map(|a| a.strip_prefix("--tls-san=").map(str::to_owned))
            .collect();
        assert!(
            controller::tls::DEFAULT_NAMES.contains(&host) || sans.iter().any(|s| s == host),
            "{host} is in the controller's serving certificate"
        );
    }
}

#[test]
fn gateway_api_crds_serve_every_kind_the_controller_reads() {
    let docs = documents_of("gateway-api-crds.yaml");
    for kind in Kind::ALL.into_iter().filter(|k| k.is_custom()) {
        let resource = kind.api_resource();
        if resource.group != "gateway.networking.k8s.io" {
            continue;
        }
        let name = format!("{}.{}", resource.plural, resource.group);
        let crd = find(&docs, "CustomResourceDefinition", &name);
        assert_eq!(crd["spec"]["group"], resource.group.as_str());
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["kind"], resource.kind.as_str());
        assert_eq!(crd["spec"]["names"]["plural"], resource.plural.as_str());
        let versions = crd["spec"]["versions"].as_sequence().unwrap();
        let served = versions
            .iter()
            .find(|v| v["name"] == resource.version.as_str())
            .unwrap_or_else(|| panic!("{name} has no version {}", resource.version));
        assert_eq!(served["served"], true, "{name}");
        assert_eq!(served["storage"], true, "{name}");
        // Every served version: the status subresource (the deployer writes Gateway status
        // there) and a structural schema keeping spec and status as given.
        for version in versions {
            assert!(version["subresources"]["status"].is_mapping(), "{name}");
            let schema = &version["schema"]["openAPIV3Schema"];
            assert_eq!(schema["type"], "object");
            for part in ["spec", "status"] {
                assert_eq!(
                    schema["properties"][part]["type"], "object",
                    "{name} {part}"
                );
                assert_eq!(
                    schema["properties"][part]["x-kubernetes-preserve-unknown-fields"], true,
                    "{name} {part}"
                );
            }
        }
    }
}

/// amesh's own policy CRDs serve the version and plural the controller watches, with a
/// structural schema (YAML anchors expanded by the parser).
#[test]
fn policy_crds_serve_every_amesh_kind_the_controller_reads() {
    // In every rendering, so `kubectl apply -k` installs them with the controller.
    for (rendering, docs) in renderings() {
        eprintln!("checking deploy/{rendering}");
        check_policy_crds(&docs);
    }
}

fn check_policy_crds(docs: &[Value]) {
    for kind in Kind::ALL.into_iter().filter(|k| k.is_custom()) {
        let resource = kind.api_resource();
        if resource.group != controller::manifests::ratelimit::GROUP {
            continue;
        }
        let name = format!("{}.{}", resource.plural, resource.group);
        let crd = find(docs, "CustomResourceDefinition", &name);
        assert_eq!(crd["spec"]["names"]["kind"], resource.kind.as_str());
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        let versions = crd["spec"]["versions"].as_sequence().unwrap();
        let served = versions
            .iter()
            .find(|v| v["name"] == resource.version.as_str())
            .unwrap_or_else(|| panic!("{name} has no version {}", resource.version));
        assert_eq!(served["served"], true, "{name}");
        assert_eq!(served["storage"], true, "{name}");
        let spec = &served["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["properties"]["total"]["properties"]["requestsPerSecond"]["minimum"], 1,
            "{name}"
        );
        assert_eq!(
            spec["properties"]["targetRefs"]["items"]["properties"]["kind"]["enum"],
            spec["properties"]["targetRef"]["properties"]["kind"]["enum"],
            "{name}"
        );
    }
}

/// The images are amesh's, tagged with the workspace version (what scripts/images.sh builds),
/// under the names each rendering promises: `amesh/<name>` in the base, buildah's and podman's
/// `localhost/amesh/<name>` for local builds; the waypoint's is the controller's setting.
#[test]
fn images_are_the_workspace_version_under_each_renderings_names() {
    let version = env!("CARGO_PKG_VERSION");
    for (rendering, docs) in renderings() {
        let prefix = if rendering == "overlays/lab-images" {
            "localhost/amesh"
        } else {
            "amesh"
        };
        let mut images = Vec::new();
        for (_, container) in containers(&docs) {
            images.push(container["image"].as_str().unwrap().to_owned());
        }
        let deployment = find(&docs, "Deployment", "amesh-controller");
        let controller = &deployment["spec"]["template"]["spec"]["containers"][0];
        let waypoint = controller["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "AMESH_WAYPOINT_IMAGE")
            .expect("the controller names the waypoint image");
        images.push(waypoint["value"].as_str().unwrap().to_owned());
        for name in ["controller", "ztunnel", "waypoint"] {
            let image = format!("{prefix}/{name}:{version}");
            assert!(
                images.contains(&image),
                "deploy/{rendering} lacks {image}: {images:?}"
            );
        }
        for image in &images {
            assert!(
                image.starts_with(&format!("{prefix}/")) && image.ends_with(&format!(":{version}")),
                "deploy/{rendering}: {image} is not {prefix}/<name>:{version}"
            );
        }
    }
}

/// No container anywhere is privileged, may gain privileges, or keeps a capability it was not
/// given by name; every pod runs under the runtime's seccomp profile; only ztunnel adds
/// capabilities.
#[test]
fn no_container_is_privileged_and_every_one_drops_all() {
    for (rendering, docs) in renderings() {
        let all = containers(&docs);
        assert!(
            all.len() >= 2,
            "deploy/{rendering}: {} containers",
            all.len()
        );
        for (owner, container) in all {
            let what = format!(
                "deploy/{rendering}: {owner} container {:?}",
                container["name"]
            );
            let context = &container["securityContext"];
            assert_ne!(context["privileged"], true, "{what} is privileged");
            assert_eq!(strings(&context["capabilities"]["drop"]), ["ALL"], "{what}");
            assert_eq!(context["readOnlyRootFilesystem"], true, "{what}");
            assert_eq!(context["allowPrivilegeEscalation"], false, "{what}");
            let added = strings(&context["capabilities"]["add"]);
            if owner == "DaemonSet/ztunnel" && container["name"] == "istio-proxy" {
                assert!(!added.is_empty(), "{what} captures: it needs capabilities");
                // The API server refuses no_new_privs with a capability spelled CAP_SYS_ADMIN;
                // Kubernetes spells them without the prefix.
                assert!(added.iter().all(|c| !c.starts_with("CAP_")), "{what}");
            } else {
                assert!(added.is_empty(), "{what} adds {added:?}");
            }
        }
        for kind in ["Deployment", "DaemonSet"] {
            for doc in docs.iter().filter(|d| d["kind"] == kind) {
                assert_eq!(
                    doc["spec"]["template"]["spec"]["securityContext"]["seccompProfile"]["type"],
                    "RuntimeDefault",
                    "deploy/{rendering}: {kind} {:?}",
                    doc["metadata"]["name"]
                );
            }
        }
    }
}

/// The controller can be drained node by node: two replicas, a PodDisruptionBudget that keeps
/// one, probes on the port it serves, and bounded resources.
#[test]
fn controller_survives_voluntary_disruptions() {
    for (rendering, docs) in renderings() {
        let deployment = find(&docs, "Deployment", "amesh-controller");
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        let pdb = find(&docs, "PodDisruptionBudget", "amesh-controller");
        assert_eq!(
            pdb["metadata"]["namespace"],
            deployment["metadata"]["namespace"]
        );
        let selector = pdb["spec"]["selector"]["matchLabels"].as_mapping().unwrap();
        for (key, value) in selector {
            assert_eq!(
                &labels[key], value,
                "deploy/{rendering}: PDB selects the controller"
            );
        }
        let replicas = deployment["spec"]["replicas"].as_u64().unwrap();
        let min = pdb["spec"]["minAvailable"].as_u64().unwrap();
        assert!(
            min >= 1 && min < replicas,
            "deploy/{rendering}: minAvailable {min} of {replicas} replicas lets a drain proceed"
        );
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let args = strings(&container["args"]);
        let tls: std::net::SocketAddr = flag(&args, "--tls-addr", "0.0.0.0:15012").parse().unwrap();
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(
                container[probe]["tcpSocket"]["port"].as_u64(),
                Some(u64::from(tls.port())),
                "deploy/{rendering}: {probe} on the TLS port"
            );
        }
        for part in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    container["resources"][part][resource].is_string(),
                    "deploy/{rendering}: controller {part}.{resource}"
                );
            }
        }
    }
}

/// Every container of every workload in `docs`, with `Kind/name` of its owner; init
/// containers too.
fn containers(docs: &[Value]) -> Vec<(String, &Value)> {
    let mut found = Vec::new();
    for doc in docs {
        let pod = &doc["spec"]["template"]["spec"];
        for list in ["initContainers", "containers"] {
            if let Some(list) = pod[list].as_sequence() {
                for container in list {
                    let owner = format!(
                        "{}/{}",
                        doc["kind"].as_str().unwrap_or_default(),
                        doc["metadata"]["name"].as_str().unwrap_or_default()
                    );
                    found.push((owner, container));
                }
            }
        }
    }
    found
}

//! The waypoint template, `deploy/waypoint/waypoint.yaml`: the controller's check accepts it;
//! filled for a sample Gateway (infrastructure labels and annotations, a non-default HBONE
//! port) it gives exactly the known-good ServiceAccount, Service and Deployment; broken copies
//! of it fail the check naming the file, the object and the field; and, read as YAML straight
//! from the file, every environment variable, port, probe path, mount and token in it is one
//! the `waypoint` binary and the controller actually use, so a rename on either side fails here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use controller::ca::root_configmap::{ROOT_CERT_KEY, ROOT_CONFIGMAP};
use controller::ca::token_review::DEFAULT_AUDIENCE;
use controller::deployer::objects::{self, TEMPLATE_FILE, TEMPLATE_TEXT};
use controller::deployer::{Template, WaypointGateway, WaypointSettings, DEFAULT_CONTROL_ADDRESS};
use controller::TranslateOptions;
use serde_json::{json, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sample_gateway() -> WaypointGateway {
    WaypointGateway {
        namespace: "shop".into(),
        name: "wp".into(),
        uid: "6f0c1d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f".into(),
        generation: Some(3),
        hbone_port: 15088,
        labels: BTreeMap::from([
            ("team".into(), "payments".into()),
            // The template's labels win over the infrastructure's.
            ("gateway.istio.io/managed".into(), "someone".into()),
        ]),
        annotations: BTreeMap::from([("owner".into(), "ops@example.com".into())]),
    }
}

fn sample_settings() -> WaypointSettings {
    WaypointSettings {
        image: "registry.example/amesh/waypoint:1.2.3".into(),
        control_address: "https://amesh-controller.mesh.svc:15012".into(),
        trust_domain: "corp.example".into(),
        cluster_id: "east".into(),
        domain_suffix: "cluster.east".into(),
    }
}

fn metadata() -> Value {
    json!({
        "name": "wp", "namespace": "shop",
        "labels": {
            "team": "payments",
            "gateway.networking.k8s.io/gateway-name": "wp",
            "gateway.istio.io/managed": "istio.io-mesh-controller"
        },
        "annotations": {"owner": "ops@example.com"},
        "ownerReferences": [{
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "name": "wp", "uid": "6f0c1d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f", "controller": true
        }]
    })
}

/// The objects as the controller wrote them before the template existed, for the sample.
fn known_good() -> [Value; 3] {
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let value = |name: &str, value: &str| json!({"name": name, "value": value});
    let root = "/var/run/secrets/istio/root-cert.pem";
    let control = "https://amesh-controller.mesh.svc:15012";
    let account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata()});
    let service = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": metadata(),
        "spec": {
            "type": "ClusterIP",
            "selector": {"gateway.networking.k8s.io/gateway-name": "wp"},
            "ports": [
                {"name": "mesh", "port": 15088, "targetPort": 15088, "protocol": "TCP"},
                {"name": "status-port", "port": 15021, "targetPort": 15021, "protocol": "TCP"}
            ]
        }
    });
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata(),
        "spec": {
            "selector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": "wp"}},
            "template": {
                "metadata": {
                    "labels": {
                        "team": "payments",
                        "gateway.networking.k8s.io/gateway-name": "wp",
                        "gateway.istio.io/managed": "istio.io-mesh-controller",
                        "istio.io/gateway-name": "wp",
                        "istio.io/dataplane-mode": "none",
                        "service.istio.io/canonical-name": "wp",
                        "service.istio.io/canonical-revision": "latest",
                        "sidecar.istio.io/inject": "false"
                    },
                    "annotations": {"owner": "ops@example.com"}
                },
                "spec": {
                    "serviceAccountName": "wp",
                    "containers": [{
                        "name": "waypoint",
                        "image": "registry.example/amesh/waypoint:1.2.3",
                        "env": [
                            field("POD_NAME", "metadata.name"),
                            field("POD_NAMESPACE", "metadata.namespace"),
                            field("INSTANCE_IP", "status.podIP"),
                            field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
                            field("NODE_NAME", "spec.nodeName"),
                            value("GATEWAY_NAME", "wp"),
                            value("XDS_ADDRESS", control),
                            value("XDS_ROOT_CA", root),
                            value("CA_ADDRESS", control),
                            value("CA_ROOT_CA", root),
                            value("AMESH_TOKEN_FILE", "/var/run/secrets/tokens/istio-token"),
                            value("TRUST_DOMAIN", "corp.example"),
                            value("CLUSTER_ID", "east"),
                            value("CLUSTER_DOMAIN", "cluster.east"),
                            value("AMESH_HBONE_ADDR", "0.0.0.0:15088")
                        ],
                        "ports": [
                            {"name": "mesh", "containerPort": 15088, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": 15020, "protocol": "TCP"},
                            {"name": "status-port", "containerPort": 15021, "protocol": "TCP"}
                        ],
                        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}},
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true,
                            "runAsUser": 1337
                        },
                        "volumeMounts": [
                            {"name": "istio-token", "mountPath": "/var/run/secrets/tokens", "readOnly": true},
                            {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio", "readOnly": true}
                        ]
                    }],
                    "volumes": [
                        {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                            "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"
                        }}]}},
                        {"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}}
                    ]
                }
            }
        }
    });
    [account, service, deployment]
}

#[test]
fn the_built_in_template_is_the_file_and_passes_its_check() {
    let on_disk = std::fs::read_to_string(repo().join(TEMPLATE_FILE)).unwrap();
    assert_eq!(TEMPLATE_TEXT, on_disk, "the binary embeds {TEMPLATE_FILE}");
    Template::builtin().unwrap().check().unwrap();
}

#[test]
fn the_template_gives_the_known_good_objects_for_a_sample_gateway() {
    let (gw, settings) = (sample_gateway(), sample_settings());
    let rendered = [
        serde_json::to_value(objects::service_account(&gw, &settings).unwrap()).unwrap(),
        serde_json::to_value(objects::service(&gw, &settings).unwrap()).unwrap(),
        serde_json::to_value(objects::deployment(&gw, &settings).unwrap()).unwrap(),
    ];
    for (rendered, expected) in rendered.iter().zip(known_good()) {
        assert_eq!(rendered, &expected);
    }
}

#[test]
fn the_default_port_sets_no_hbone_address_and_the_defaults_are_the_controllers() {
    let gw = WaypointGateway {
        hbone_port: 15008,
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        ..sample_gateway()
    };
    let settings = WaypointSettings::new(&TranslateOptions::default());
    let deployment = serde_json::to_value(objects::deployment(&gw, &settings).unwrap()).unwrap();
    let pod = &deployment["spec"]["template"];
    assert!(pod["metadata"].get("annotations").is_none());
    assert!(deployment["metadata"].get("annotations").is_none());
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["ports"][0]["containerPort"], 15008);
    let env = container["env"].as_array().unwrap();
    assert!(!env.iter().any(|v| v["name"] == "AMESH_HBONE_ADDR"));
    assert!(env.contains(&json!({"name": "XDS_ADDRESS", "value": DEFAULT_CONTROL_ADDRESS})));
    assert_eq!(container["image"], controller::deployer::DEFAULT_IMAGE);
}

/// The error of checking `text`, a broken copy of the template.
fn fault(text: &str) -> controller::deployer::TemplateError {
    match Template::parse("broken.yaml", text) {
        Err(e) => e,
        Ok(template) => template
            .check()
            .expect_err("the broken template passes the check"),
    }
}

/// `TEMPLATE_TEXT` with `from` (which must be in it) replaced by `to`.
fn edited(from: &str, to: &str) -> String {
    assert!(TEMPLATE_TEXT.contains(from), "{from:?}");
    TEMPLATE_TEXT.replacen(from, to, 1)
}

#[test]
fn a_broken_template_fails_the_check_naming_file_object_and_field() {
    let cases = [
        // A misspelt field would be dropped silently by the types.
        (
            edited("readinessProbe:", "readinesProbe:"),
            "Deployment",
            "spec.template.spec.containers[0].readinesProbe",
        ),
        // A value of the wrong type.
        (
            edited("containerPort: 15020", "containerPort: metrics"),
            "Deployment",
            "spec.template.spec.containers[0].ports[1].containerPort",
        ),
        // A placeholder nobody fills.
        (
            edited("image: ${IMAGE}", "image: ${WAYPOINT_IMAGE}"),
            "Deployment",
            "spec.template.spec.containers[0].image",
        ),
        (
            edited("name: ${GATEWAY_NAME}", "name: ${GATEWAY_NAME"),
            "ServiceAccount",
            "metadata.name",
        ),
        // One of each kind, exactly.
        (
            format!("{TEMPLATE_TEXT}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: x}}\n"),
            "document 4",
            "kind",
        ),
        (
            edited("kind: Service\n", "kind: ConfigMap\n"),
            "document 2",
            "kind",
        ),
        (
            TEMPLATE_TEXT.split("\n---\n").take(2).collect::<Vec<_>>().join("\n---\n"),
            "Deployment",
            "-",
        ),
        // The Service must select the Deployment's pods.
        (
            edited(
                "  selector:\n    gateway.networking.k8s.io/gateway-name: ${GATEWAY_NAME}",
                "  selector:\n    app: waypoint",
            ),
            "Service",
            "spec.selector",
        ),
        (
            edited("- name: waypoint\n", "- name: proxy\n"),
            "Deployment",
            "spec.template.spec.containers",
        ),
    ];
    for (text, document, field) in cases {
        let error = fault(&text);
        assert_eq!(
            (
                error.file.as_str(),
                error.document.as_str(),
                error.field.as_str()
            ),
            ("broken.yaml", document, field),
            "{error}"
        );
        let message = error.to_string();
        assert!(
            message.contains("broken.yaml") && message.contains(field),
            "{message}"
        );
    }
}

/// `key` of the YAML mapping `v`, failing with the path when absent.
fn at<'a>(v: &'a serde_yaml::Value, path: &[&str]) -> &'a serde_yaml::Value {
    path.iter().fold(v, |v, key| {
        v.get(*key)
            .unwrap_or_else(|| panic!("{TEMPLATE_FILE}: no {}", path.join(".")))
    })
}

fn str_of(v: &serde_yaml::Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

/// The template's documents as plain YAML, by kind.
fn documents() -> BTreeMap<String, serde_yaml::Value> {
    let text = std::fs::read_to_string(repo().join(TEMPLATE_FILE)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|d: &serde_yaml::Value| !d.is_null())
        .map(|d| (str_of(&d["kind"]).to_owned(), d))
        .collect()
}

/// The deploy test of the template: what it sets is what the `waypoint` binary reads
/// (`waypoint/src/config.rs`) and serves (`mesh/src/admin.rs`), and what the controller
/// publishes and reviews.
#[test]
fn the_template_sets_what_the_waypoint_binary_reads() {
    let config = std::fs::read_to_string(repo().join("waypoint/src/config.rs")).unwrap();
    let admin = std::fs::read_to_string(repo().join("mesh/src/admin.rs")).unwrap();
    let docs = documents();
    let pod = at(&docs["Deployment"], &["spec", "template", "spec"]);
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    assert_eq!(str_of(&container["name"]), objects::CONTAINER);

    // Every variable set is read by the binary, and the required ones are set.
    let env: BTreeMap<&str, &serde_yaml::Value> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| (str_of(&v["name"]), v))
        .collect();
    for name in env.keys() {
        assert!(
            config.contains(&format!("get(\"{name}\")"))
                || config.contains(&format!("required(\"{name}\")")),
            "{TEMPLATE_FILE} sets {name}, which the waypoint does not read"
        );
    }
    for required in ["POD_NAMESPACE", "POD_NAME", "GATEWAY_NAME"] {
        assert!(config.contains(&format!("required(\"{required}\")")));
        assert!(env.contains_key(required), "{required} is set");
    }

    // The ports are the binary's listeners: HBONE (the placeholder, whose default is the
    // binary's), metrics and readiness at the binary's defaults.
    let port = |name: &str| {
        container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["containerPort"].clone())
            .unwrap_or_else(|| panic!("no container port {name}"))
    };
    assert_eq!(port("mesh").as_str(), Some("${HBONE_PORT}"));
    assert!(config.contains("addr(\"AMESH_HBONE_ADDR\", \"0.0.0.0:15008\")"));
    let metrics = port("metrics").as_u64().unwrap();
    assert!(
        config.contains(&format!(
            "addr(\"AMESH_STATS_ADDR\", \"0.0.0.0:{metrics}\")"
        )),
        "metrics port {metrics} is not the waypoint's AMESH_STATS_ADDR default"
    );
    let status = port("status-port").as_u64().unwrap();
    assert!(
        config.contains(&format!(
            "addr(\"AMESH_READINESS_ADDR\", \"0.0.0.0:{status}\")"
        )),
        "status port {status} is not the waypoint's AMESH_READINESS_ADDR default"
    );
    let probe = at(container, &["readinessProbe", "httpGet"]);
    assert_eq!(probe["port"].as_u64(), Some(status));
    let path = str_of(&probe["path"]);
    assert!(
        admin.contains(&format!("(Endpoint::Readiness, _, \"{path}\")")),
        "the readiness listener does not serve {path}"
    );
    let service_ports = at(&docs["Service"], &["spec", "ports"])
        .as_sequence()
        .unwrap();
    assert!(service_ports
        .iter()
        .any(|p| p["port"].as_u64() == Some(status)));

    // The root the controller verifies with: the ConfigMap it publishes, mounted, and the
    // variables pointing at its key in the mount.
    let mount_of = |volume: &str| {
        container["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume)
            .map(|m| str_of(&m["mountPath"]).to_owned())
            .unwrap_or_else(|| panic!("volume {volume} is not mounted"))
    };
    let volumes = pod["volumes"].as_sequence().unwrap();
    let root_volume = volumes
        .iter()
        .find(|v| v["configMap"]["name"] == ROOT_CONFIGMAP)
        .expect("the root ConfigMap is a volume");
    let root = format!("{}/{ROOT_CERT_KEY}", mount_of(str_of(&root_volume["name"])));
    for name in ["XDS_ROOT_CA", "CA_ROOT_CA"] {
        assert_eq!(str_of(&env[name]["value"]), root, "{name}");
    }
    // The token the controller reviews: its audience, at the path AMESH_TOKEN_FILE names.
    let token_volume = volumes
        .iter()
        .find(|v| v["projected"].is_mapping())
        .expect("a projected token");
    let token = &token_volume["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(str_of(&token["audience"]), DEFAULT_AUDIENCE);
    assert_eq!(
        str_of(&env["AMESH_TOKEN_FILE"]["value"]),
        format!(
            "{}/{}",
            mount_of(str_of(&token_volume["name"])),
            str_of(&token["path"])
        )
    );
    for name in ["XDS_ADDRESS", "CA_ADDRESS"] {
        assert_eq!(str_of(&env[name]["value"]), "${CONTROL_ADDRESS}");
    }

    // As Istio's waypoint: uid 1337, non-root, nothing to escalate to, no capabilities, a
    // read-only root, resources asked for, never privileged.
    let security = &container["securityContext"];
    assert_eq!(security["runAsUser"].as_u64(), Some(1337));
    assert_eq!(security["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(
        security["capabilities"]["drop"].as_sequence().unwrap(),
        &[serde_yaml::Value::from("ALL")]
    );
    assert!(security.get("privileged").is_none());
    assert!(security["capabilities"].get("add").is_none());
    let requests = at(container, &["resources", "requests"]);
    assert!(requests["cpu"].is_string() && requests["memory"].is_string());
}

//! The waypoint deployer through kube-rs against the fake API server (real JSON over HTTP,
//! every request recorded with its body): the exact server-side apply bodies of a waypoint's
//! ServiceAccount, Service and Deployment and of its Gateway's status; `Programmed` once the
//! Deployment has an available replica, with the Service's ClusterIP as the address; a second
//! reconcile that writes nothing; an edited Deployment repaired; someone else's Service or
//! Deployment never overwritten (the Gateway says why); a name that cannot be a Service refused;
//! the root published into the Gateway's namespace; and the loop following snapshots.

#[path = "kube_source/fake_api.rs"]
mod fake_api;

use std::sync::Arc;
use std::time::Duration;

use controller::ca::root_configmap::ROOT_CONFIGMAP;
use controller::deployer::{self, Outcome, WaypointDeployer, WaypointSettings};
use controller::manifests::{Gateway, ObjectKey};
use controller::{Manifests, TranslateOptions};
use fake_api::{FakeApi, Recorded, APPLY, DEADLINE};
use serde_json::{json, Value};

const NS: &str = "shop";
const NAME: &str = "waypoint";
const UID: &str = "0b5c2a8e-4d1f-4c3a-9a57-6f2d7e1c9b10";
const ROOT: &str = "-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n";
const GATEWAY_PATH: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/waypoint";
const SA_PATH: &str = "/api/v1/namespaces/shop/serviceaccounts/waypoint";
const SERVICE_PATH: &str = "/api/v1/namespaces/shop/services/waypoint";
const DEPLOYMENT_PATH: &str = "/apis/apps/v1/namespaces/shop/deployments/waypoint";
const STATUS_PATH: &str =
    "/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/waypoint/status";
/// The query parameters of every apply, sorted.
const APPLY_PARAMS: [&str; 2] = ["fieldManager=amesh-controller", "force=true"];

fn settings() -> WaypointSettings {
    WaypointSettings {
        image: "registry.example/amesh/waypoint:1.2.3".into(),
        ..WaypointSettings::new(&TranslateOptions::default())
    }
}

/// The Gateway as `kubectl apply` and the API server leave it.
fn gateway(name: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": name, "namespace": NS, "uid": UID, "generation": 1,
            "labels": {"istio.io/waypoint-for": "service"}
        },
        "spec": {
            "gatewayClassName": "istio-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]
        }
    })
}

async fn api_with_gateway() -> FakeApi {
    let api = fake_api::serve().await;
    api.objects.insert("gateways", NS, NAME, gateway(NAME));
    api
}

fn key() -> ObjectKey {
    ObjectKey::new(NS, NAME)
}

async fn reconcile(api: &FakeApi) -> Outcome {
    deployer::reconcile(&api.client(), &settings(), &key(), ROOT)
        .await
        .expect("the reconcile succeeds")
}

/// The server-side applies received, from `from` on.
fn applies(api: &FakeApi, from: usize) -> Vec<Recorded> {
    api.objects.recorded()[from..]
        .iter()
        .filter(|r| r.method == "PATCH")
        .cloned()
        .collect()
}

fn owner() -> Value {
    json!([{
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "name": NAME, "uid": UID, "controller": true
    }])
}

fn object_labels() -> Value {
    json!({
        "gateway.networking.k8s.io/gateway-name": NAME,
        "gateway.istio.io/managed": "istio.io-mesh-controller"
    })
}

fn expected_service_account() -> Value {
    json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {
            "name": NAME, "namespace": NS, "labels": object_labels(), "ownerReferences": owner()
        }
    })
}

fn expected_service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": NAME, "namespace": NS, "labels": object_labels(), "ownerReferences": owner()
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {"gateway.networking.k8s.io/gateway-name": NAME},
            "ports": [
                {"name": "mesh", "port": 15008, "targetPort": 15008, "protocol": "TCP"},
                {"name": "status-port", "port": 15021, "targetPort": 15021, "protocol": "TCP"}
            ]
        }
    })
}

fn expected_deployment() -> Value {
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let value = |name: &str, value: &str| json!({"name": name, "value": value});
    let root = "/var/run/secrets/istio/root-cert.pem";
    let control = "https://amesh-controller.istio-system.svc:15012";
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": NAME, "namespace": NS, "labels": object_labels(), "ownerReferences": owner()
        },
        "spec": {
            "selector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": NAME}},
            "template": {
                "metadata": {"labels": {
                    "gateway.networking.k8s.io/gateway-name": NAME,
                    "gateway.istio.io/managed": "istio.io-mesh-controller",
                    "istio.io/gateway-name": NAME,
                    "istio.io/dataplane-mode": "none",
                    "service.istio.io/canonical-name": NAME,
                    "service.istio.io/canonical-revision": "latest",
                    "sidecar.istio.io/inject": "false"
                }},
                "spec": {
                    "serviceAccountName": NAME,
                    "containers": [{
                        "name": "waypoint",
                        "image": "registry.example/amesh/waypoint:1.2.3",
                        "env": [
                            field("POD_NAME", "metadata.name"),
                            field("POD_NAMESPACE", "metadata.namespace"),
                            field("INSTANCE_IP", "status.podIP"),
                            field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
                            field("NODE_NAME", "spec.nodeName"),
                            value("GATEWAY_NAME", NAME),
                            value("XDS_ADDRESS", control),
                            value("XDS_ROOT_CA", root),
                            value("CA_ADDRESS", control),
                            value("CA_ROOT_CA", root),
                            value("AMESH_TOKEN_FILE", "/var/run/secrets/tokens/istio-token"),
                            value("TRUST_DOMAIN", "cluster.local"),
                            value("CLUSTER_ID", "Kubernetes"),
                            value("CLUSTER_DOMAIN", "cluster.local")
                        ],
                        "ports": [
                            {"name": "mesh", "containerPort": 15008, "protocol": "TCP"},
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
                        {"name": "istiod-ca-cert", "configMap": {"name": ROOT_CONFIGMAP}}
                    ]
                }
            }
        }
    })
}

/// The status apply body, its transition times checked and then replaced by `<time>`.
fn status_body(recorded: &Recorded) -> Value {
    let mut body = recorded.body.clone();
    for condition in body["status"]["conditions"].as_array_mut().unwrap() {
        let time = condition["lastTransitionTime"].as_str().unwrap();
        assert!(
            time.len() == 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "RFC 3339 in UTC, whole seconds: {time}"
        );
        condition["lastTransitionTime"] = "<time>".into();
    }
    body
}

fn expected_status(addresses: Value, programmed: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": NAME, "namespace": NS},
        "status": {
            "addresses": addresses,
            "conditions": [
                {
                    "type": "Accepted", "status": "True", "reason": "Accepted",
                    "message": "amesh deploys this waypoint as ServiceAccount, Service and Deployment shop/waypoint",
                    "observedGeneration": 1, "lastTransitionTime": "<time>"
                },
                programmed
            ]
        }
    })
}

fn pending() -> Value {
    json!({
        "type": "Programmed", "status": "False", "reason": "Pending",
        "message": "waiting for Deployment shop/waypoint to have an available replica",
        "observedGeneration": 1, "lastTransitionTime": "<time>"
    })
}

fn cluster_ip(api: &FakeApi) -> String {
    let service = api.objects.get("services", NS, NAME).unwrap();
    service["spec"]["clusterIP"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn first_reconcile_applies_the_waypoint_objects_and_reports_pending() {
    let api = api_with_gateway().await;
    assert_eq!(reconcile(&api).await, Outcome::Pending);

    let recorded = api.objects.recorded();
    let requests: Vec<String> = recorded
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        requests,
        [
            format!("GET {GATEWAY_PATH}"),
            format!("GET /api/v1/namespaces/shop/configmaps/{ROOT_CONFIGMAP}"),
            "POST /api/v1/namespaces/shop/configmaps".to_owned(),
            format!("GET {SA_PATH}"),
            format!("PATCH {SA_PATH}"),
            format!("GET {SERVICE_PATH}"),
            format!("PATCH {SERVICE_PATH}"),
            format!("GET {DEPLOYMENT_PATH}"),
            format!("PATCH {DEPLOYMENT_PATH}"),
            format!("PATCH {STATUS_PATH}"),
        ]
    );
    // The root the waypoint mounts, in its own namespace.
    assert_eq!(recorded[2].body["data"]["root-cert.pem"], ROOT);
    let applies = applies(&api, 0);
    for apply in &applies {
        assert_eq!(apply.content_type, APPLY, "{}", apply.path);
        let mut params: Vec<&str> = apply.query.split('&').filter(|p| !p.is_empty()).collect();
        params.sort_unstable();
        assert_eq!(params, APPLY_PARAMS, "{}", apply.path);
    }
    assert_eq!(applies[0].body, expected_service_account());
    assert_eq!(applies[1].body, expected_service());
    assert_eq!(applies[2].body, expected_deployment());
    let address = json!([{"type": "IPAddress", "value": cluster_ip(&api)}]);
    assert_eq!(
        status_body(&applies[3]),
        expected_status(address, pending())
    );
    // What the API server keeps: the status on the Gateway, the objects owned by it.
    let stored = api.objects.get("gateways", NS, NAME).unwrap();
    assert_eq!(stored["status"]["conditions"][1]["reason"], "Pending");
    let deployment = api.objects.get("deployments", NS, NAME).unwrap();
    assert_eq!(deployment["metadata"]["ownerReferences"], owner());
}

#[tokio::test]
async fn programmed_once_a_replica_is_available_then_nothing_is_written() {
    let api = api_with_gateway().await;
    assert_eq!(reconcile(&api).await, Outcome::Pending);
    let first_status = api.objects.get("gateways", NS, NAME).unwrap()["status"].clone();

    // Nothing changed: reads only.
    let before = api.objects.recorded().len();
    assert_eq!(reconcile(&api).await, Outcome::Pending);
    assert!(
        applies(&api, before).is_empty(),
        "{:?}",
        api.objects.writes()
    );

    // The Deployment controller reports a replica, and the API server defaults fields the
    // deployer does not set: neither is a reason to apply the Deployment again.
    api.objects.modify("deployments", NS, NAME, |d| {
        d["spec"]["replicas"] = 1.into();
        d["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] =
            "/dev/termination-log".into();
        d["status"] = json!({"replicas": 1, "availableReplicas": 1, "readyReplicas": 1});
    });
    let before = api.objects.recorded().len();
    assert_eq!(reconcile(&api).await, Outcome::Programmed);
    let applies_now = applies(&api, before);
    assert_eq!(
        applies_now
            .iter()
            .map(|r| r.path.as_str())
            .collect::<Vec<_>>(),
        [STATUS_PATH],
        "only the status changes"
    );
    let programmed = json!({
        "type": "Programmed", "status": "True", "reason": "Programmed",
        "message": "Deployment shop/waypoint has an available replica",
        "observedGeneration": 1, "lastTransitionTime": "<time>"
    });
    let address = json!([{"type": "IPAddress", "value": cluster_ip(&api)}]);
    assert_eq!(
        status_body(&applies_now[0]),
        expected_status(address, programmed)
    );
    // Accepted did not change status: its transition time is kept.
    assert_eq!(
        applies_now[0].body["status"]["conditions"][0]["lastTransitionTime"],
        first_status["conditions"][0]["lastTransitionTime"]
    );

    let before = api.objects.recorded().len();
    let version =
        api.objects.get("gateways", NS, NAME).unwrap()["metadata"]["resourceVersion"].clone();
    assert_eq!(reconcile(&api).await, Outcome::Programmed);
    assert!(
        applies(&api, before).is_empty(),
        "a programmed waypoint costs reads only: {:?}",
        api.objects.writes()
    );
    assert_eq!(
        api.objects.get("gateways", NS, NAME).unwrap()["metadata"]["resourceVersion"],
        version
    );
}

#[tokio::test]
async fn an_edited_deployment_is_applied_again() {
    let api = api_with_gateway().await;
    reconcile(&api).await;
    api.objects.modify("deployments", NS, NAME, |d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"] = "someone/else:latest".into();
    });
    let before = api.objects.recorded().len();
    reconcile(&api).await;
    let applies = applies(&api, before);
    assert_eq!(applies.len(), 1, "{:?}", api.objects.writes());
    assert_eq!(applies[0].path, DEPLOYMENT_PATH);
    assert_eq!(applies[0].body, expected_deployment());
    let stored = api.objects.get("deployments", NS, NAME).unwrap();
    assert_eq!(
        stored["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/amesh/waypoint:1.2.3"
    );
}

#[tokio::test]
async fn someone_elses_service_or_deployment_is_never_overwritten() {
    for (plural, path, kind) in [
        ("services", SERVICE_PATH, "Service"),
        ("deployments", DEPLOYMENT_PATH, "Deployment"),
    ] {
        let api = api_with_gateway().await;
        // A user's object of the waypoint's name: no owner, or another owner.
        let owners = if kind == "Service" {
            json!(null)
        } else {
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": "other", "controller": true}])
        };
        let theirs = json!({
            "metadata": {"name": NAME, "namespace": NS, "ownerReferences": owners},
            "spec": {"note": "the user's"}
        });
        api.objects.insert(plural, NS, NAME, theirs);
        let stored = api.objects.get(plural, NS, NAME).unwrap();

        let why = format!(
            "{kind} shop/waypoint exists and is not controlled by this Gateway: amesh does not \
             overwrite it; delete or rename it, or rename the Gateway"
        );
        assert_eq!(reconcile(&api).await, Outcome::Conflict(why.clone()));
        assert!(
            !api.objects.writes().contains(&format!("PATCH {path}")),
            "{:?}",
            api.objects.writes()
        );
        assert_eq!(
            api.objects.get(plural, NS, NAME).unwrap(),
            stored,
            "{kind} untouched"
        );
        if kind == "Service" {
            assert!(
                api.objects.get("deployments", NS, NAME).is_none(),
                "no pods start behind someone else's Service"
            );
        }
        let status = applies(&api, 0).pop().unwrap();
        assert_eq!(status.path, STATUS_PATH);
        let programmed = &status.body["status"]["conditions"][1];
        assert_eq!(programmed["status"], "False");
        assert_eq!(programmed["reason"], "ResourceConflict");
        assert_eq!(programmed["message"], why.as_str());

        // Asked again: the same answer, and no write at all.
        let before = api.objects.recorded().len();
        assert_eq!(reconcile(&api).await, Outcome::Conflict(why));
        assert!(applies(&api, before).is_empty());
    }
}

#[tokio::test]
async fn an_existing_service_account_is_used_as_it_is() {
    let api = api_with_gateway().await;
    let theirs =
        json!({"metadata": {"name": NAME, "namespace": NS, "annotations": {"iam": "role-x"}}});
    api.objects.insert("serviceaccounts", NS, NAME, theirs);
    let stored = api.objects.get("serviceaccounts", NS, NAME).unwrap();
    assert_eq!(reconcile(&api).await, Outcome::Pending);
    assert_eq!(
        api.objects.get("serviceaccounts", NS, NAME).unwrap(),
        stored
    );
    let paths: Vec<String> = applies(&api, 0).into_iter().map(|r| r.path).collect();
    assert_eq!(paths, [SERVICE_PATH, DEPLOYMENT_PATH, STATUS_PATH]);
}

#[tokio::test]
async fn a_name_that_cannot_name_a_service_is_refused_on_the_gateway() {
    let api = fake_api::serve().await;
    api.objects
        .insert("gateways", NS, "way.point", gateway("way.point"));
    let outcome = deployer::reconcile(
        &api.client(),
        &settings(),
        &ObjectKey::new(NS, "way.point"),
        ROOT,
    )
    .await
    .unwrap();
    assert!(
        matches!(outcome, Outcome::Invalid(ref why) if why.contains("\"way.point\" must be a DNS label")),
        "{outcome:?}"
    );
    let paths: Vec<String> = applies(&api, 0).into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/way.point/status"]
    );
    let status = &applies(&api, 0)[0].body["status"];
    assert_eq!(status["conditions"][0]["status"], "False");
    assert_eq!(status["conditions"][0]["reason"], "Invalid");
}

#[tokio::test]
async fn other_classes_and_missing_gateways_are_left_alone() {
    let api = fake_api::serve().await;
    let mut other = gateway(NAME);
    other["spec"]["gatewayClassName"] = "istio".into();
    assert_eq!(reconcile(&api).await, Outcome::Gone);
    api.objects.insert("gateways", NS, NAME, other);
    assert_eq!(reconcile(&api).await, Outcome::NotWaypoint);
    assert!(
        api.objects.writes().is_empty(),
        "{:?}",
        api.objects.writes()
    );
}

#[tokio::test]
async fn a_custom_hbone_port_reaches_the_service_and_the_binary() {
    let api = fake_api::serve().await;
    let mut gw = gateway(NAME);
    gw["spec"]["listeners"][0]["port"] = 15088.into();
    api.objects.insert("gateways", NS, NAME, gw);
    reconcile(&api).await;
    let service = api.objects.get("services", NS, NAME).unwrap();
    assert_eq!(service["spec"]["ports"][0]["port"], 15088);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], 15088);
    let deployment = api.objects.get("deployments", NS, NAME).unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["ports"][0]["containerPort"], 15088);
    let env = container["env"].as_array().unwrap();
    assert!(env.contains(&json!({"name": "AMESH_HBONE_ADDR", "value": "0.0.0.0:15088"})));
}

/// Every variable the Deployment sets is one the `waypoint` binary reads.
#[test]
fn the_deployment_sets_only_what_the_waypoint_binary_reads() {
    let config = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../waypoint/src/config.rs"),
    )
    .unwrap();
    let deployment = expected_deployment();
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    for var in env {
        let name = var["name"].as_str().unwrap();
        assert!(
            config.contains(&format!("get(\"{name}\")"))
                || config.contains(&format!("required(\"{name}\")")),
            "the waypoint does not read {name}"
        );
    }
    for required in ["POD_NAMESPACE", "POD_NAME", "GATEWAY_NAME"] {
        assert!(config.contains(&format!("required(\"{required}\")")));
        assert!(
            env.iter().any(|v| v["name"] == required),
            "{required} is set"
        );
    }
}

/// Polls `check` until it holds, or fails the test after [`DEADLINE`].
async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_deployer_follows_snapshots_until_programmed() {
    let api = api_with_gateway().await;
    let typed: Gateway = serde_json::from_value(gateway(NAME)).unwrap();
    let mut manifests = Manifests::default();
    manifests.gateways.insert(key(), typed);
    let (manifests_tx, manifests_rx) = tokio::sync::watch::channel(Arc::new(manifests));
    let (_root_tx, root_rx) = tokio::sync::watch::channel(ROOT.to_owned());
    let task = WaypointDeployer::new(api.client(), settings())
        .first_retry(Duration::from_millis(50))
        .spawn(manifests_rx, root_rx);

    let programmed = |api: &FakeApi| {
        api.objects
            .get("gateways", NS, NAME)
            .is_some_and(|g| g["status"]["conditions"][1]["status"] == "True")
    };
    until("the Deployment", || {
        api.objects.get("deployments", NS, NAME).is_some()
    })
    .await;
    api.objects.modify("deployments", NS, NAME, |d| {
        d["status"] = json!({"availableReplicas": 1});
    });
    // Pending waypoints are looked at again with backoff, without any snapshot change.
    until("Programmed", || programmed(&api)).await;
    drop(manifests_tx);
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the deployer stops with its source")
        .unwrap();
}

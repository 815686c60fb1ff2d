//! The Kubernetes source, driven through kube-rs against a fake API server that speaks the
//! real list/watch protocol (`fake_api`): the published manifests, and the workloads and
//! policies translated from them, follow adds, updates and deletes, bookmarks, a `410 Gone`
//! forcing a relist, a CRD that is not installed, and malformed objects; EndpointSlices of a
//! Service without a selector are watched like the rest.

#[path = "kube_source/fake_api.rs"]
mod fake_api;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use controller::render;
use controller::source::KubeSource;
use controller::{translate, Manifests, TranslateOptions};
use fake_api::{Served, DEADLINE};
use serde_json::{json, Value};
use tokio::sync::watch;

const PODS: &str = "/api/v1/pods";
const NAMESPACES: &str = "/api/v1/namespaces";
const POLICIES: &str = "/apis/security.istio.io/v1/authorizationpolicies";
const SERVICES: &str = "/api/v1/services";
const ENDPOINT_SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";

/// The source, started on the fake API server.
struct Cluster {
    api: HashMap<&'static str, Served>,
    manifests: watch::Receiver<Arc<Manifests>>,
    _source: tokio::task::JoinHandle<()>,
}

impl Cluster {
    /// Serves the `shop` namespace (ambient) plus `lists` (path → resourceVersion, items), with
    /// the collections in `missing` not served, then starts the source and waits for its first
    /// snapshot.
    async fn start(lists: Vec<(&str, &str, Vec<Value>)>, missing: &[&str]) -> Cluster {
        // `RUST_LOG=controller=debug cargo test --test kube_source -- --nocapture` shows
        // what the source logs (rejected objects with their field, relists, missing CRDs).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let (url, api, _reviews) = fake_api::start().await;
        api[NAMESPACES].set_list("5", vec![namespace("shop")]);
        for (path, resource_version, items) in lists {
            api[path].set_list(resource_version, items);
        }
        for path in missing {
            api[path].serve(false);
        }
        let config = kube::Config::new(url.parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let source = KubeSource::new(client).missing_retry(Duration::from_millis(100));
        let (manifests, task) = tokio::time::timeout(DEADLINE, source.start())
            .await
            .expect("every kind is listed in time");
        Cluster {
            api,
            manifests,
            _source: task,
        }
    }

    fn served(&mut self, path: &str) -> &mut Served {
        self.api.get_mut(path).unwrap()
    }

    /// Waits until the translation of the published manifests satisfies `check`.
    async fn until(&mut self, what: &str, check: impl Fn(&Model) -> bool) -> Model {
        let waited =
            tokio::time::timeout(DEADLINE, self.manifests.wait_for(|m| check(&Model::of(m))))
                .await
                .map(|seen| seen.map(drop));
        let now = Model::of(&self.manifests.borrow());
        match waited {
            Ok(Ok(_)) => now,
            Ok(Err(_)) => panic!("source stopped while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}; model now: {now:#?}"),
        }
    }

    fn now(&self) -> Model {
        Model::of(&self.manifests.borrow())
    }
}

/// What the tests look at in the translation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Model {
    /// Workload name → (addresses, canonical name).
    workloads: BTreeMap<String, (Vec<String>, String)>,
    /// `namespace/name` of every L4 policy.
    policies: Vec<String>,
}

impl Model {
    fn of(m: &Manifests) -> Model {
        let t = translate(m, &TranslateOptions::default());
        let text = |v: &serde_yaml::Value| v.as_str().unwrap_or_default().to_owned();
        let workloads = t
            .addresses
            .iter()
            .filter_map(|(_, address)| {
                let rendered = render::address(address);
                let w = rendered.get("workload")?;
                let addresses = w.get("addresses")?.as_sequence()?.iter().map(text);
                let canonical = w.get("canonicalName").map(text).unwrap_or_default();
                Some((text(w.get("name")?), (addresses.collect(), canonical)))
            })
            .collect();
        let policies = t
            .authorizations
            .iter()
            .map(|(name, _)| name.clone())
            .filter(|name| name.starts_with("shop/"))
            .collect();
        Model {
            workloads,
            policies,
        }
    }

    fn workload(&self, name: &str) -> Option<(&[String], &str)> {
        self.workloads
            .get(name)
            .map(|(ips, canonical)| (ips.as_slice(), canonical.as_str()))
    }
}

fn namespace(name: &str) -> Value {
    json!({"metadata": {
        "name": name, "resourceVersion": "2",
        "labels": {"istio.io/dataplane-mode": "ambient"}
    }})
}

/// A running pod in `shop`, as a list item (no `apiVersion`/`kind`, as the API server sends
/// them).
fn pod(name: &str, ip: &str, app: &str, resource_version: &str) -> Value {
    json!({
        "metadata": {
            "name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "resourceVersion": resource_version, "labels": {"app": app},
            "managedFields": [{"manager": "kubelet", "operation": "Update"}]
        },
        "spec": {
            "nodeName": "node-1", "serviceAccountName": "default",
            "containers": [{"name": "app", "image": "app:1"}]
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

/// A pod as a watch event carries it.
fn pod_event(name: &str, ip: &str, app: &str, resource_version: &str) -> Value {
    let mut pod = pod(name, ip, app, resource_version);
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    pod
}

fn deny_port(name: &str, port: &str, resource_version: &str) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": resource_version},
        "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"ports": [port]}}]}]}
    })
}

fn bookmark(resource_version: &str) -> Value {
    json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": resource_version}})
}

fn ips(ips: &[&str]) -> Vec<String> {
    ips.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn pods_added_updated_and_deleted_follow_the_watch() {
    let mut cluster = Cluster::start(vec![(PODS, "10", vec![])], &[]).await;
    assert!(cluster.now().workloads.is_empty());
    let watch = cluster.served(PODS).next_watch().await;
    assert_eq!(
        watch.resource_version, "10",
        "the watch starts at the list's version"
    );

    watch.send("ADDED", pod_event("web", "10.0.0.5", "web", "11"));
    let model = cluster
        .until("the pod's workload", |m| m.workload("web").is_some())
        .await;
    assert_eq!(
        model.workload("web"),
        Some((&ips(&["10.0.0.5"])[..], "web"))
    );

    watch.send("MODIFIED", pod_event("web", "10.0.0.6", "shop-web", "12"));
    cluster
        .until("the new IP and label", |m| {
            m.workload("web") == Some((&ips(&["10.0.0.6"])[..], "shop-web"))
        })
        .await;

    watch.send("DELETED", pod_event("web", "10.0.0.6", "shop-web", "13"));
    cluster
        .until("the workload gone", |m| m.workloads.is_empty())
        .await;
    assert_eq!(cluster.served(PODS).lists(), 1, "no relist on the way");
}

#[tokio::test]
async fn bookmarks_move_the_watch_on_without_a_relist() {
    let pods = vec![pod("web", "10.0.0.5", "web", "10")];
    let mut cluster = Cluster::start(vec![(PODS, "10", pods)], &[]).await;
    let before = cluster.now();
    assert!(before.workload("web").is_some());

    let watch = cluster.served(PODS).next_watch().await;
    watch.send("BOOKMARK", bookmark("15"));
    // The server ends the watch (its timeout): the client watches again from the bookmark.
    drop(watch);
    let watch = cluster.served(PODS).next_watch().await;
    assert_eq!(watch.resource_version, "15");
    assert_eq!(
        cluster.served(PODS).lists(),
        1,
        "a bookmark never forces a list"
    );

    // Events still flow on the resumed watch, and the rest of the model is untouched.
    watch.send("ADDED", pod_event("api", "10.0.0.7", "api", "16"));
    let after = cluster
        .until("the second pod", |m| m.workload("api").is_some())
        .await;
    assert_eq!(after.workload("web"), before.workload("web"));
    assert_eq!(cluster.served(PODS).lists(), 1);
}

#[tokio::test]
async fn gone_forces_a_relist_that_replaces_the_pods() {
    let pods = vec![
        pod("a", "10.0.0.1", "a", "8"),
        pod("b", "10.0.0.2", "b", "9"),
    ];
    let mut cluster = Cluster::start(vec![(PODS, "10", pods)], &[]).await;
    let names: Vec<_> = cluster.now().workloads.into_keys().collect();
    assert_eq!(names, ["a", "b"]);
    let watch = cluster.served(PODS).next_watch().await;

    // Meanwhile `a` was deleted, `b` moved and `c` appeared, and the watch history is gone.
    cluster.served(PODS).set_list(
        "20",
        vec![
            pod("b", "10.0.0.22", "b", "18"),
            pod("c", "10.0.0.3", "c", "19"),
        ],
    );
    watch.send(
        "ERROR",
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version: 10 (17)", "reason": "Expired", "code": 410
        }),
    );
    let watch = cluster.served(PODS).next_watch().await;
    assert_eq!(
        watch.resource_version, "20",
        "watching again from the new list"
    );
    assert_eq!(cluster.served(PODS).lists(), 2);
    let model = cluster
        .until("the relisted pods", |m| m.workloads.contains_key("c"))
        .await;
    let expected: BTreeMap<_, _> = [
        ("b".to_owned(), (ips(&["10.0.0.22"]), "b".to_owned())),
        ("c".to_owned(), (ips(&["10.0.0.3"]), "c".to_owned())),
    ]
    .into();
    assert_eq!(
        model.workloads, expected,
        "the model is the new list, `a` is gone"
    );
}

#[tokio::test]
async fn authorization_policies_follow_the_watch() {
    let pods = vec![pod("web", "10.0.0.5", "web", "3")];
    let mut cluster = Cluster::start(vec![(PODS, "3", pods), (POLICIES, "4", vec![])], &[]).await;
    assert!(cluster.now().policies.is_empty());
    let watch = cluster.served(POLICIES).next_watch().await;

    watch.send("ADDED", deny_port("deny-9000", "9000", "5"));
    cluster
        .until("the policy", |m| m.policies == ["shop/deny-9000"])
        .await;
    watch.send("DELETED", deny_port("deny-9000", "9000", "6"));
    cluster
        .until("the policy gone", |m| m.policies.is_empty())
        .await;
}

#[tokio::test]
async fn a_missing_crd_blocks_nothing_and_is_picked_up_once_installed() {
    let mut cluster = Cluster::start(vec![(PODS, "3", vec![])], &[POLICIES]).await;
    // Listed without the policies: pods still follow.
    let watch = cluster.served(PODS).next_watch().await;
    watch.send("ADDED", pod_event("web", "10.0.0.5", "web", "4"));
    cluster
        .until("the pod", |m| m.workload("web").is_some())
        .await;

    // The CRD gets installed with a policy: the source asks again and finds it.
    let policies = cluster.served(POLICIES);
    policies.set_list("7", vec![deny_port("deny-9000", "9000", "7")]);
    policies.serve(true);
    cluster
        .until("the policy of the new CRD", |m| {
            m.policies == ["shop/deny-9000"]
        })
        .await;
    let watch = cluster.served(POLICIES).next_watch().await;
    assert_eq!(watch.resource_version, "7");
}

#[tokio::test]
async fn malformed_objects_are_left_out_and_block_nothing() {
    let mut bad_pod = pod("bad", "10.0.0.9", "bad", "2");
    bad_pod["spec"]["containers"] = json!("not a list");
    // Both a selector and a targetRef: refused by validation, as in the folder.
    let mut bad_policy = deny_port("bad", "9000", "3");
    bad_policy["spec"]["selector"] = json!({"matchLabels": {"app": "web"}});
    bad_policy["spec"]["targetRef"] = json!({"kind": "Service", "group": "", "name": "web"});
    let pods = vec![bad_pod, pod("web", "10.0.0.5", "web", "3")];
    let policies = vec![bad_policy, deny_port("good", "9000", "4")];
    let mut cluster = Cluster::start(vec![(PODS, "5", pods), (POLICIES, "5", policies)], &[]).await;
    let model = cluster.now();
    assert_eq!(model.workloads.keys().collect::<Vec<_>>(), ["web"]);
    assert_eq!(model.policies, ["shop/good"]);

    // An update that makes a pod malformed takes it out, as editing its file would.
    let watch = cluster.served(PODS).next_watch().await;
    let mut broken = pod_event("web", "10.0.0.5", "web", "6");
    broken["status"]["podIPs"] = json!(7);
    watch.send("MODIFIED", broken);
    watch.send("ADDED", pod_event("api", "10.0.0.7", "api", "7"));
    let model = cluster
        .until("the broken pod out, the next one in", |m| {
            m.workload("api").is_some() && m.workload("web").is_none()
        })
        .await;
    assert_eq!(model.policies, ["shop/good"]);

    // A malformed new version of a DENY policy leaves the last valid one in force: dropping
    // it would open the port it closes.
    let watch = cluster.served(POLICIES).next_watch().await;
    let mut broken = deny_port("good", "9000", "8");
    broken["spec"]["action"] = json!("PERMIT");
    watch.send("MODIFIED", broken);
    watch.send("ADDED", deny_port("marker", "9001", "9"));
    let model = cluster
        .until("the next policy in", |m| m.policies.len() == 2)
        .await;
    assert_eq!(model.policies, ["shop/good", "shop/marker"]);
    // ... also across a relist (410 Gone) that lists it malformed.
    let mut broken = deny_port("good", "9000", "8");
    broken["spec"]["action"] = json!("PERMIT");
    cluster.served(POLICIES).set_list("20", vec![broken]);
    watch.send(
        "ERROR",
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "too old resource version", "reason": "Expired", "code": 410}),
    );
    let model = cluster
        .until("the relist to drop the marker", |m| m.policies.len() == 1)
        .await;
    assert_eq!(model.policies, ["shop/good"]);
}

/// A Service without a selector in `shop`, as a list item.
fn selectorless_service(name: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": "2"},
        "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "sql", "port": 5432}]}
    })
}

/// An EndpointSlice of Service `db` with one endpoint at `ip`, as a watch event carries it.
fn db_slice(name: &str, ip: &str, resource_version: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": name, "namespace": "shop", "resourceVersion": resource_version,
            "labels": {"kubernetes.io/service-name": "db"}
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}]
    })
}

#[tokio::test]
async fn endpoint_slices_follow_the_watch() {
    let services = vec![selectorless_service("db")];
    let lists = vec![(SERVICES, "3", services), (ENDPOINT_SLICES, "4", vec![])];
    let mut cluster = Cluster::start(lists, &[]).await;
    assert!(cluster.now().workloads.is_empty(), "no endpoints yet");
    let watch = cluster.served(ENDPOINT_SLICES).next_watch().await;
    assert_eq!(watch.resource_version, "4");
    // The slices of Services with a selector stay on the API server.
    assert_eq!(
        watch.label_selector,
        "endpointslice.kubernetes.io/managed-by!=endpointslice-controller.k8s.io"
    );

    watch.send("ADDED", db_slice("db-x1", "192.0.2.10", "5"));
    let model = cluster
        .until("the slice's endpoint", |m| m.workload("db-x1").is_some())
        .await;
    assert_eq!(
        model.workload("db-x1"),
        Some((&ips(&["192.0.2.10"])[..], ""))
    );

    watch.send("MODIFIED", db_slice("db-x1", "192.0.2.11", "6"));
    cluster
        .until("the endpoint's new address", |m| {
            m.workload("db-x1") == Some((&ips(&["192.0.2.11"])[..], ""))
        })
        .await;

    watch.send("DELETED", db_slice("db-x1", "192.0.2.11", "7"));
    cluster
        .until("the endpoint gone", |m| m.workloads.is_empty())
        .await;
    assert_eq!(cluster.served(ENDPOINT_SLICES).lists(), 1);
}

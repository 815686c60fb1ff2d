use super::*;

fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_yaml::from_str(text).unwrap()
}

fn input() -> Input {
    Input {
        pods: vec![yaml(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  serviceAccountName: sleep
  containers: [{name: c, image: x}]
"#,
        )],
        deployments: vec![yaml(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, version: v2}}
    spec:
      containers:
      - name: web
        image: x
        ports: [{containerPort: 9080}, {containerPort: 53, protocol: UDP}]
"#,
        )],
        services: vec![
            yaml(
                r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}, {name: http, port: 9080}]
"#,
            ),
            yaml(
                r#"
apiVersion: v1
kind: Service
metadata: {name: fixed, namespace: shop}
spec: {clusterIP: 10.128.128.1, ports: [{port: 1}]}
"#,
            ),
            yaml(
                r#"
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: shop}
spec: {clusterIP: None, selector: {app: web}, ports: [{port: 7000, targetPort: tcp}]}
"#,
            ),
        ],
        nodes: BTreeMap::new(),
        gateways: Vec::new(),
        service_accounts: Vec::new(),
    }
}

/// The input's pods, without the ones every lab adds.
fn user_pods(e: &Expanded) -> Vec<&PlannedPod> {
    e.pods
        .iter()
        .filter(|p| p.namespace != "kube-system" && p.namespace != MESH_NAMESPACE)
        .collect()
}

#[test]
fn deployments_become_named_scheduled_pods_without_addresses() {
    let plan = AddressPlan::new(0).unwrap();
    let e = expand(&input(), 2, &plan, false).unwrap();
    let pods = user_pods(&e);
    assert_eq!(pods.len(), 4);
    let client = pods[0];
    assert_eq!(
        (client.namespace.as_str(), client.name.as_str()),
        ("default", "client")
    );
    assert_eq!(client.service_account, "sleep");
    assert!(client.ports.is_empty());
    // Round robin: client node1, replicas node2, node1, node2.
    let nodes: Vec<usize> = pods.iter().map(|p| p.node).collect();
    assert_eq!(nodes, vec![1, 2, 1, 2]);
    let web = pods[1];
    assert_eq!(web.namespace, "shop");
    assert_eq!(web.version, "v2");
    assert_eq!(web.service_account, "default");
    // containerPort 9080 (TCP) + Service targetPort 8080; not the UDP port.
    assert_eq!(web.ports, vec![8080, 9080]);
    let parts: Vec<&str> = web.name.split('-').collect();
    assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("web", 10, 5));
    assert_eq!(web.labels["pod-template-hash"], parts[1]);
    let owner = &web.pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.clone()),
        ("ReplicaSet", format!("web-{}", parts[1]))
    );
    // Scheduled, not started: no status, so no IP, until the node's CNI ADD gives one.
    assert!(web.pod.status.is_none());
    assert_eq!(
        web.pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some("node2")
    );
    // Names are stable across runs and distinct across replicas.
    let again = expand(&input(), 2, &plan, false).unwrap();
    assert_eq!(user_pods(&again)[1].name, web.name);
    assert_ne!(pods[2].name, web.name);
    assert_eq!(web.uid.len(), 36);
    assert_ne!(pods[2].uid, web.uid);
}

#[test]
fn system_objects_every_cluster_has() {
    let plan = AddressPlan::new(0).unwrap();
    let e = expand(&input(), 2, &plan, true).unwrap();
    // ztunnel pods first, one per node, then kube-system's.
    let first: Vec<(String, usize, PodRole)> = e.pods[..3]
        .iter()
        .map(|p| (format!("{}/{}", p.namespace, p.name), p.node, p.role))
        .collect();
    assert_eq!(
        first,
        [
            (
                "istio-system/ztunnel-node1".to_string(),
                1,
                PodRole::Ztunnel
            ),
            (
                "istio-system/ztunnel-node2".to_string(),
                2,
                PodRole::Ztunnel
            ),
            ("kube-system/coredns".to_string(), 1, PodRole::App),
        ]
    );
    assert_eq!(e.pods[0].service_account, "ztunnel");
    assert_eq!(e.pods[0].labels["app"], "ztunnel");
    // Without the mesh, no ztunnel pods.
    let plain = expand(&input(), 2, &plan, false).unwrap();
    assert!(plain.pods.iter().all(|p| p.role == PodRole::App));
    // default/kubernetes: no selector, the first free address, its hand-kept EndpointSlice
    // pointing at the root netns (the stand-in API server), outside the mesh.
    let k = e
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("kubernetes"))
        .unwrap();
    let spec = k.spec.as_ref().unwrap();
    assert!(spec.selector.is_none());
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.128.128.2"));
    let slice = &e.endpoint_slices[0];
    assert_eq!(
        slice.metadata.labels.as_ref().unwrap()["kubernetes.io/service-name"],
        "kubernetes"
    );
    assert_eq!(
        slice.endpoints.as_ref().unwrap()[0].addresses,
        ["10.128.0.254"]
    );
    assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(6443));
}

#[test]
fn services_get_free_cluster_ips_and_keep_explicit_ones() {
    let plan = AddressPlan::new(0).unwrap();
    let e = expand(&input(), 1, &plan, false).unwrap();
    let vip = |name: &str| {
        e.service_infos
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .vip
            .map(|v| v.to_string())
    };
    // 10.128.128.1 is taken by "fixed", so "kubernetes" gets the next one and "web" the one
    // after.
    assert_eq!(vip("kubernetes").as_deref(), Some("10.128.128.2"));
    assert_eq!(vip("web").as_deref(), Some("10.128.128.3"));
    assert_eq!(vip("fixed").as_deref(), Some("10.128.128.1"));
    assert_eq!(vip("headless"), None);
    let web = e.service_infos.iter().find(|s| s.name == "web").unwrap();
    assert_eq!(web.ports[0].target_port, "8080");
    assert_eq!(web.ports[1].target_port, "9080");
    assert_eq!(
        e.services[1].spec.as_ref().unwrap().cluster_ips,
        Some(vec!["10.128.128.3".to_string()])
    );
}

#[test]
fn node_name_pins_a_pod_and_unknown_nodes_are_refused() {
    let plan = AddressPlan::new(0).unwrap();
    let mut i = input();
    i.pods[0].spec.as_mut().unwrap().node_name = Some("node2".into());
    let e = expand(&i, 2, &plan, false).unwrap();
    assert_eq!(user_pods(&e)[0].node, 2);
    let err = expand(&i, 1, &plan, false).unwrap_err();
    assert!(err.to_string().contains("node2"), "{err}");
    assert!(matches!(
        expand(&i, 0, &plan, false),
        Err(ExpandError::NodeCount(0))
    ));
}

#[test]
fn nodes_have_addresses_and_pod_cidrs() {
    let plan = AddressPlan::new(1).unwrap();
    let e = expand(&Input::default(), 3, &plan, false).unwrap();
    assert_eq!(e.nodes.len(), 3);
    let n3 = &e.nodes[2];
    assert_eq!(n3.metadata.name.as_deref(), Some("node3"));
    assert_eq!(
        n3.spec.as_ref().unwrap().pod_cidr.as_deref(),
        Some("10.129.3.0/24")
    );
    let addrs = n3.status.as_ref().unwrap().addresses.as_ref().unwrap();
    assert_eq!(addrs[0].address, "10.129.0.3");
}

#[test]
fn safe_names() {
    let s = safe_encode(12345, 10);
    assert_eq!(s.len(), 10);
    assert!(s.bytes().all(|b| SAFE_ALPHABET.contains(&b)));
    assert_ne!(safe_encode(1, 5), safe_encode(2, 5));
}

fn with_waypoint() -> Input {
    let mut i = input();
    i.gateways.push(yaml(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"#,
    ));
    // Not a waypoint: someone else's class.
    i.gateways.push(yaml(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP}]
"#,
    ));
    i
}

#[test]
fn waypoint_gateways_become_a_service_account_a_pod_and_a_service() {
    let plan = AddressPlan::new(0).unwrap();
    let e = expand(&with_waypoint(), 2, &plan, true).unwrap();
    assert_eq!(e.waypoints.len(), 1, "only the istio-waypoint Gateway");
    let w = &e.waypoints[0];
    assert_eq!(w.key(), "shop/waypoint");
    let sa = w.service_account.as_ref().unwrap();
    assert_eq!(
        (
            sa.metadata.namespace.as_deref(),
            sa.metadata.name.as_deref()
        ),
        (Some("shop"), Some("waypoint"))
    );
    // One pod, named as its Deployment's pods are, labelled as Istio's template labels them.
    let pods: Vec<&PlannedPod> = e
        .pods
        .iter()
        .filter(|p| p.role == PodRole::Waypoint)
        .collect();
    assert_eq!(pods.len(), 1);
    let pod = pods[0];
    assert_eq!(pod.namespace, "shop");
    assert!(pod.name.starts_with("waypoint-"), "{}", pod.name);
    assert_eq!(pod.service_account, "waypoint");
    for (k, v) in [
        ("gateway.networking.k8s.io/gateway-name", "waypoint"),
        ("istio.io/gateway-name", "waypoint"),
        ("istio.io/dataplane-mode", "none"),
    ] {
        assert_eq!(pod.labels.get(k).map(String::as_str), Some(v), "label {k}");
    }
    assert_eq!(pod.ports, vec![15008, 15020, 15021]);
    assert!(pod.pod.spec.as_ref().unwrap().node_name.is_some());
    // Its Service selects it on the gateway-name label, port `mesh` 15008, with a ClusterIP
    // after the input's Services (theirs do not move).
    let svc = e
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("waypoint"))
        .unwrap();
    let spec = svc.spec.as_ref().unwrap();
    let selector = spec.selector.as_ref().unwrap();
    assert_eq!(
        selector.get("gateway.networking.k8s.io/gateway-name"),
        Some(&"waypoint".to_string())
    );
    assert!(selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)));
    let port = &spec.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port, port.protocol.as_deref()),
        (Some("mesh"), 15008, Some("TCP"))
    );
    assert!(spec.cluster_ip.is_some());
    let without = expand(&input(), 2, &plan, true).unwrap();
    for s in &without.service_infos {
        let same = e.service_infos.iter().find(|x| x.name == s.name).unwrap();
        assert_eq!(same.vip, s.vip, "{} moved", s.name);
    }
    // The Service is the one the controller treats as a waypoint's.
    assert_eq!(
        svc.metadata.labels.as_ref().unwrap()["gateway.networking.k8s.io/gateway-name"],
        "waypoint"
    );
}

#[test]
fn waypoints_need_the_mesh_and_a_free_service_name() {
    let plan = AddressPlan::new(0).unwrap();
    // Without the mesh nothing implements the class.
    let plain = expand(&with_waypoint(), 1, &plan, false).unwrap();
    assert!(plain.waypoints.is_empty());
    assert!(plain.pods.iter().all(|p| p.role == PodRole::App));
    // A Service of the Gateway's name is refused, naming both.
    let mut taken = with_waypoint();
    taken.services.push(yaml(
        "apiVersion: v1\nkind: Service\nmetadata: {name: waypoint, namespace: shop}\nspec: {ports: [{port: 1}]}\n",
    ));
    let err = expand(&taken, 1, &plan, true).unwrap_err().to_string();
    assert!(
        err.contains("Gateway shop/waypoint") && err.contains("Service"),
        "{err}"
    );
    // A ServiceAccount of that name is adopted, not made again.
    let mut adopted = with_waypoint();
    adopted.service_accounts.push(yaml(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: waypoint, namespace: shop}\n",
    ));
    let e = expand(&adopted, 1, &plan, true).unwrap();
    assert!(e.waypoints[0].service_account.is_none());
    // A name that cannot be a Service's is refused with the field.
    let mut bad = with_waypoint();
    bad.gateways[0].metadata.name = Some("Way_point".into());
    let err = expand(&bad, 1, &plan, true).unwrap_err().to_string();
    assert!(
        err.contains("metadata.name") && err.contains("Way_point"),
        "{err}"
    );
}

#[test]
fn a_containers_env_reaches_its_echo_app_and_bad_settings_stop_up() {
    let plan = AddressPlan::new(0).unwrap();
    let mut i = input();
    let template = &mut i.deployments[0].spec.template;
    template.spec.as_mut().unwrap().containers[0].env = Some(vec![yaml(
        "{name: ECHO_CALLS, value: 'http://details:9080/details/0'}",
    )]);
    let e = expand(&i, 2, &plan, true).unwrap();
    for p in (e.pods.iter()).filter(|p| p.namespace == "shop") {
        assert_eq!(
            p.env,
            [(
                "ECHO_CALLS".to_string(),
                "http://details:9080/details/0".to_string()
            )],
            "{}",
            p.name
        );
    }
    // Only app pods: the ztunnels' and others' containers are not echo apps.
    assert!(e
        .pods
        .iter()
        .filter(|p| p.role != PodRole::App)
        .all(|p| p.env.is_empty()));
    i.pods[0].spec.as_mut().unwrap().containers[0].env =
        Some(vec![yaml("{name: ECHO_FAIL_PERCENT, value: 'half'}")]);
    let err = expand(&i, 2, &plan, true).unwrap_err().to_string();
    assert_eq!(
        err,
        "pod default/client: ECHO_FAIL_PERCENT=\"half\": not a whole percent 0..=100"
    );
}

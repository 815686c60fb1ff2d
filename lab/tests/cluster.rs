//! A real lab (root needed): topology, echo app over TCP/HTTP/1.1/HTTP/2 within and across
//! nodes, generated manifests, state file, parallel labs, teardown.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use lab::client::HttpVersion;
use lab::{netns, Lab, LabState};

#[test]
fn two_node_lab_serves_tcp_and_http_within_and_across_nodes() {
    let dir = manifests(MANIFESTS);
    let lab = Lab::up(dir.path(), 2, options()).expect("lab up");
    let id = lab.id().clone();
    let state = lab.state().clone();

    // Topology: root, 2 nodes, 3 pods and kube-system's, each its own netns; forwarding on
    // the nodes.
    let mut expected: Vec<String> = vec![state.root_netns.clone()];
    expected.extend(state.nodes.iter().map(|n| n.netns.clone()));
    expected.extend(state.pods.iter().map(|p| p.netns.clone()));
    expected.sort();
    let mut found = netns_of(&id);
    found.sort();
    assert_eq!(found, expected);
    assert_eq!(state.pods.len(), 4);
    // Every pod's address came from its node's IPAM (the node's pod CIDR), and the node's
    // host-local store records it.
    for pod in &state.pods {
        let node = state.node(&pod.node).unwrap();
        assert!(
            node.pod_cidr.contains(&pod.ip),
            "{} has {}",
            pod.key(),
            pod.ip
        );
        let ipam = lab::runtime::node_dir(&state, &node.name)
            .join("ipam/lab")
            .join(pod.ip.to_string());
        assert!(ipam.is_file(), "no IPAM record {}", ipam.display());
    }
    for node in &state.nodes {
        assert_eq!(
            netns::read_sysctl(&node.netns, "net.ipv4.ip_forward").unwrap(),
            "1"
        );
    }

    let client = lab.pod("client").unwrap().clone();
    assert_eq!(client.service_account, "client");
    let webs: Vec<_> = state.pods_of("shop", "web-").into_iter().cloned().collect();
    assert_eq!(webs.len(), 2);
    let same = webs
        .iter()
        .find(|w| w.node == client.node)
        .expect("a web pod on the client's node");
    let cross = webs
        .iter()
        .find(|w| w.node != client.node)
        .expect("a web pod on the other node");

    for web in [same, cross] {
        for port in [8080, 9090] {
            let addr = SocketAddr::from((web.ip, port));
            let back = lab
                .tcp_echo("client", addr, b"hello over tcp", TIMEOUT)
                .unwrap();
            assert_eq!(back, b"hello over tcp", "raw echo from {}", web.name);
        }
        // A bigger payload, to see the half-close handling carry everything.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let back = lab
            .tcp_echo("client", SocketAddr::from((web.ip, 8080)), &big, TIMEOUT)
            .unwrap();
        assert!(
            back == big,
            "large echo from {} came back different",
            web.name
        );

        for version in [HttpVersion::Http1, HttpVersion::Http2] {
            let addr = SocketAddr::from((web.ip, 8080));
            let (status, reply) = http_get(&client.netns, addr, version, "/hello?x=1");
            assert_eq!(status, 200);
            assert_eq!(reply.pod, web.name);
            assert_eq!(reply.namespace, "shop");
            assert_eq!(reply.version, "v1");
            assert_eq!(reply.node, web.node);
            assert_eq!(reply.path, "/hello?x=1");
            assert_eq!(
                reply.source.ip(),
                client.ip,
                "the app sees the client pod's IP"
            );
            assert_eq!(reply.destination, addr);
            assert_eq!(reply.authority, addr.to_string());
            let expected = if version == HttpVersion::Http1 {
                "HTTP/1.1"
            } else {
                "HTTP/2"
            };
            assert_eq!(reply.protocol, expected);
        }
    }
    let (status, _) = http_get(
        &client.netns,
        SocketAddr::from((cross.ip, 8080)),
        HttpVersion::Http1,
        "/status/503",
    );
    assert_eq!(status, 503);

    // Pods and the root reach each other too (the controller will live in the root netns).
    let root_to_pod = netns::run_in(&state.root_netns, || {
        std::net::TcpStream::connect_timeout(&SocketAddr::from((cross.ip, 8080)), TIMEOUT)
    })
    .unwrap();
    assert!(root_to_pod.is_ok());

    // Generated manifests: Pods with IPs and nodes, Services with VIPs, the rest copied.
    let gen = lab.manifests_dir();
    let pods = std::fs::read_to_string(gen.join("generated/pods.yaml")).unwrap();
    for p in &state.pods {
        assert!(pods.contains(&format!("podIP: {}", p.ip)), "{pods}");
        assert!(pods.contains(&format!("name: {}", p.name)), "{pods}");
    }
    assert!(pods.contains("nodeName: node2"));
    let vip = state.service("shop", "web").unwrap().vip.unwrap();
    assert!(lab.plan().service_cidr().contains(&vip));
    let services = std::fs::read_to_string(gen.join("generated/services.yaml")).unwrap();
    assert!(
        services.contains(&format!("clusterIP: {vip}")),
        "{services}"
    );
    let input = std::fs::read_to_string(gen.join("input/app.yaml")).unwrap();
    assert!(input.contains("PeerAuthentication") && input.contains("kind: Deployment"));
    assert!(
        !input.contains("kind: Pod") && !input.contains("kind: Service\n"),
        "{input}"
    );

    // The controller's folder source reads the generated folder cleanly.
    let loaded = controller::load_dir(gen);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let m = &loaded.manifests;
    assert_eq!((m.pods.len(), m.nodes.len(), m.services.len()), (4, 2, 2));
    assert_eq!(m.peer_authentications.len(), 1);
    for p in &state.pods {
        let pod = &m.pods[&controller::manifests::ObjectKey::new(&p.namespace, &p.name)];
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.pod_ip.as_deref(), Some(p.ip.to_string().as_str()));
        assert_eq!(
            pod.spec.as_ref().unwrap().node_name.as_deref(),
            Some(p.node.as_str())
        );
    }

    // Another process sees the same lab through state.json.
    assert_eq!(&LabState::load(&id).unwrap(), lab.state());
    let status = cli(&["status", "--id", id.as_str()], Duration::from_secs(10));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&cross.name) && text.contains(&vip.to_string()),
        "{text}"
    );
    let exec = cli(
        &[
            "exec",
            "--id",
            id.as_str(),
            "shop/client",
            "--",
            "ip",
            "-4",
            "-br",
            "addr",
            "show",
            "eth0",
        ],
        Duration::from_secs(10),
    );
    assert!(
        String::from_utf8_lossy(&exec.stdout).contains(&client.ip.to_string()),
        "exec: {exec:?}"
    );

    let pids: Vec<i32> = state.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids.len(), 5, "one echo app per pod and the cluster DNS");
    lab.down().expect("down");
    assert_gone(&id, &pids);
}

#[test]
fn parallel_labs_do_not_collide() {
    let dir = manifests(MANIFESTS);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Lab::up(dir.path(), 2, options()));
        let b = s.spawn(|| Lab::up(dir.path(), 1, options()));
        (
            a.join().unwrap().expect("lab a"),
            b.join().unwrap().expect("lab b"),
        )
    });
    assert_ne!(a.id(), b.id());
    assert_ne!(a.plan().index(), b.plan().index());
    assert!(!a.plan().lab_cidr().contains(&b.plan().lab_cidr().network()));
    let names_a = netns_of(a.id());
    assert!(names_a.iter().all(|n| !netns_of(b.id()).contains(n)));
    // Same manifests, different addresses; both labs work at the same time.
    for lab in [&a, &b] {
        let web = &lab.state().pods_of("shop", "web-")[0];
        let back = lab
            .tcp_echo("client", SocketAddr::from((web.ip, 8080)), b"ping", TIMEOUT)
            .unwrap();
        assert_eq!(back, b"ping");
        assert!(lab.plan().lab_cidr().contains(&web.ip));
    }
    let ids = [a.id().clone(), b.id().clone()];
    let pids: Vec<i32> = [&a, &b]
        .iter()
        .flat_map(|l| l.state().processes.iter().map(|p| p.pid))
        .collect();
    // Dropping tears down, as after a failed assertion.
    drop(a);
    drop(b);
    for id in &ids {
        assert_gone(id, &pids);
    }
}

#[test]
fn a_failed_up_leaves_nothing_behind() {
    let pinned = MANIFESTS.replace("serviceAccountName: client", "nodeName: node3");
    let dir = manifests(&pinned);
    let id = lab::LabId::new("tfail").unwrap();
    let options = lab::LabOptions {
        id: Some(id.clone()),
        ..options()
    };
    let err = Lab::up(dir.path(), 2, options.clone()).unwrap_err();
    assert!(err.to_string().contains("node3"), "{err}");
    assert_gone(&id, &[]);

    let dir =
        manifests("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: notalist}\n");
    let err = Lab::up(dir.path(), 1, options).unwrap_err();
    assert!(err.to_string().contains("spec.ports"), "{err}");
    assert_gone(&id, &[]);
}

//! Attacks on the mesh, each as an adversarial run tried it, on a two-node lab: connections to
//! ztunnel's own ports (the self-connection loops), a forged `forwarded` header against an
//! `ipBlocks` policy, invalid edits of policies in force, floods of silent connections and
//! DNS queries, and CNI ADDs naming a netns that is not a pod's. Each scenario checks the
//! attack fails and that other pods' traffic is untouched; the figures it prints (descriptors,
//! CPU, memory of the ztunnel under attack) go in the issue notes.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use e2e::health::{assert_no_loop, new_tunnels_work, LiveTunnel};
use e2e::policies::{ALLOW_CLIENT_A, DENY_CLIENT_B, STRICT_MESH};
use e2e::probe::{accept_queue, raise_own_fd_limit, ConnectOutcome, HboneProbe, ProcStats};
use e2e::{addr, wait_for, MeshLab};

/// Every port ztunnel serves (Istio's): none may be a tunnel's or a plaintext connection's
/// target.
const ZTUNNEL_PORTS: [u16; 7] = [15001, 15006, 15008, 15053, 15000, 15020, 15021];

fn server_identity() -> mesh::Identity {
    mesh::Identity::new("cluster.local", "mesh", "server").unwrap()
}

/// Whether a connection from `pod` to `to` ends (EOF or reset) within 3 s of sending a line,
/// without anything having echoed it (the HBONE listener may say a TLS alert first).
fn closed_without_answer(m: &MeshLab, pod: &str, to: SocketAddr) -> bool {
    let line = b"are you there?\n";
    let Ok(mut s) = m.lab.connect(pod, to, Duration::from_secs(3)) else {
        return true;
    };
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.write_all(line);
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // Still open after 3 s: something holds it.
                return false;
            }
            Err(_) => break,
        }
    }
    !got.windows(line.len()).any(|w| w == line)
}

#[test]
fn plaintext_to_ztunnels_own_ports_is_refused_without_a_loop() {
    let m = MeshLab::up("l4", 2);
    let server = m.ip("server-2");
    let baseline = ProcStats::read(m.ztunnel_pid("node2"));
    // From outside the mesh (a PERMISSIVE pod accepts plaintext): every port is redirected
    // to 15006 (15008 reaches the HBONE listener, which wants TLS).
    for port in ZTUNNEL_PORTS {
        assert!(
            closed_without_answer(&m, "outsider", addr(server, port)),
            "plaintext to {server}:{port} got an answer"
        );
    }
    assert_no_loop(
        &m,
        "node2",
        baseline,
        "plaintext from outside to ztunnel's ports",
    );
    // From the pod itself, straight at the listeners ztunnel holds in its netns.
    let baseline = ProcStats::read(m.ztunnel_pid("node2"));
    for ip in [IpAddr::from([127, 0, 0, 1]), server] {
        for port in [15001, 15006] {
            assert!(
                closed_without_answer(&m, "server-2", addr(ip, port)),
                "server-2 to its own {ip}:{port} got an answer"
            );
        }
    }
    assert_no_loop(&m, "node2", baseline, "a pod at its own ztunnel listeners");
    // The mesh still works for everyone.
    assert_eq!(
        m.http("client-a", addr(server, 8080)).unwrap().pod,
        "server-2"
    );
    assert_eq!(
        m.http("outsider", addr(server, 8080)).unwrap().pod,
        "server-2"
    );
}

#[test]
fn hbone_connect_to_ztunnels_own_ports_is_refused_for_any_identity() {
    let m = MeshLab::up("l4", 2);
    let server = m.ip("server-2");
    let hbone = addr(server, 15008);
    let baseline = ProcStats::read(m.ztunnel_pid("node2"));
    // An allowed identity (client-a's certificate, as a compromised workload holds it) and
    // the server's own (each hop of the loop was mTLS with the pod's own identity).
    let outsider = m.lab.pod("outsider").unwrap().netns.clone();
    for (ns, sa) in [("mesh", "client-a"), ("mesh", "server")] {
        let probe = HboneProbe::new(&m.lab, &outsider, ns, sa);
        for port in ZTUNNEL_PORTS {
            let authority = addr(server, port).to_string();
            let outcome = probe.connect(
                hbone,
                &server_identity(),
                &authority,
                Default::default(),
                b"loop?\n",
            );
            match &outcome {
                ConnectOutcome::Refused(status, reason) => {
                    assert_eq!(*status, 400, "{sa} → {authority}: {outcome:?}");
                    let reason = reason.as_deref().unwrap_or_default();
                    assert!(
                        reason.contains("ztunnel's own"),
                        "{sa} → {authority}: {reason}"
                    );
                }
                other => panic!("{sa} → CONNECT {authority} was not refused: {other:?}"),
            }
        }
        // The same identity reaches the app itself.
        match probe.connect(
            hbone,
            &server_identity(),
            &addr(server, 8080).to_string(),
            Default::default(),
            b"hello\n",
        ) {
            ConnectOutcome::Open(Ok(back)) => assert_eq!(back, b"hello\n"),
            other => panic!("{sa} → CONNECT {server}:8080: {other:?}"),
        }
    }
    assert_no_loop(&m, "node2", baseline, "HBONE CONNECT to ztunnel's ports");
}

#[test]
fn a_pod_calling_its_own_service_never_goes_through_its_own_listener() {
    let m = MeshLab::up("l4", 2);
    let vip = addr(m.vip("server"), 80);
    let me = m.ip("server-1");
    let node1 = m.ztunnel_pid("node1");
    let baseline = ProcStats::read(node1);
    // The VIP picks either endpoint: go on until server-1 has reached itself a few times.
    let mut itself = 0;
    for _ in 0..60 {
        let reply = m.http("server-1", vip).expect("server-1 → its own service");
        assert_eq!(reply.source.ip(), me);
        if reply.pod == "server-1" {
            itself += 1;
            if itself == 3 {
                break;
            }
        }
    }
    assert_eq!(
        itself, 3,
        "server-1 never reached itself through its service"
    );
    // Reported like any mesh connection, with the pod's identity on both ends.
    let metrics = lab::mesh::metrics(&m.node("node1")).unwrap();
    let principal = "spiffe://cluster.local/ns/mesh/sa/server";
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains(&format!("source_principal=\"{principal}\""))
                && l.contains("destination_workload=\"server-1\"")
                && l.contains("destination_service=\"server.mesh.svc.cluster.local\"")),
        "no destination metric for server-1 calling itself:\n{metrics}"
    );
    assert_no_loop(&m, "node1", baseline, "a pod calling itself");
}

const ALLOW_CLIENT_A_IP: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client-a-ip, namespace: mesh}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from: [{source: {ipBlocks: ["CLIENT_A/32"]}}]
"#;

#[test]
fn a_forged_forwarded_header_is_not_a_source_address() {
    let m = MeshLab::up("l4", 2);
    let server = m.ip("server-2");
    let client_a = m.ip("client-a");
    let policy = ALLOW_CLIENT_A_IP.replace("CLIENT_A", &client_a.to_string());
    m.apply_and_wait(
        "only-client-a-ip",
        &policy,
        "client-b to be refused",
        || m.http("client-b", addr(server, 8080)).is_err(),
    );
    // client-a's own address passes.
    assert_eq!(
        m.http("client-a", addr(server, 8080)).unwrap().pod,
        "server-2"
    );
    // Anyone else claiming client-a's address in `forwarded: for=` does not.
    let outsider = m.lab.pod("outsider").unwrap().netns.clone();
    let probe = HboneProbe::new(&m.lab, &outsider, "mesh", "client-b");
    for forged in [
        format!("for=\"{client_a}:40000\""),
        format!("for={client_a}"),
        format!("for=\"{client_a}:40000\";host=server.mesh.svc.cluster.local"),
    ] {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::FORWARDED, forged.parse().unwrap());
        let outcome = probe.connect(
            addr(server, 15008),
            &server_identity(),
            &addr(server, 8080).to_string(),
            headers,
            b"let me in\n",
        );
        match outcome {
            ConnectOutcome::Refused(status, _) => assert_eq!(status, 401, "forwarded: {forged}"),
            other => panic!("forwarded: {forged} passed the ipBlocks policy: {other:?}"),
        }
    }
    // The denials are charged to the real peer, never to client-a.
    let metrics = lab::mesh::metrics(&m.node("node2")).unwrap();
    let denied_as_a = metrics.lines().any(|l| {
        l.contains("response_flags=\"DENY\"") && l.contains("source_workload=\"client-a\"")
    });
    assert!(
        !denied_as_a,
        "denials were reported as client-a's:\n{metrics}"
    );
}

/// Invalid edits of a policy, as the attacker's run made them: (how, from, to).
const EDITS: &[(&str, &str, &str)] = &[
    ("misspelt action", "action: DENY", "action: DENYY"),
    ("misspelt action", "action: ALLOW", "action: ALLOWW"),
    (
        "principals: 42",
        "principals: [\"cluster.local/ns/mesh/sa/client-b\"]",
        "principals: 42",
    ),
    (
        "principals: 42",
        "principals: [\"cluster.local/ns/mesh/sa/client-a\"]",
        "principals: 42",
    ),
    ("misspelt mode", "mode: STRICT", "mode: STRICTT"),
    ("broken YAML", "rules:\n", "rules: [{\n"),
    ("broken YAML", "mtls: {mode: STRICT}", "mtls: {mode: STRICT"),
    ("unknown field", "spec:\n", "spec:\n  surprise: true\n"),
];

/// Applies each invalid edit of `valid` in turn and checks `still_enforced` after the control
/// plane has seen it.
fn break_and_check(
    m: &MeshLab,
    name: &str,
    valid: &str,
    still_enforced: impl Fn() -> Result<(), String>,
) {
    let controller_log = m
        .lab
        .state()
        .processes
        .iter()
        .rev()
        .find(|p| p.name == "amesh-controller")
        .map(|p| p.log.clone());
    let edits: Vec<_> = EDITS
        .iter()
        .filter(|(_, from, _)| valid.contains(from))
        .collect();
    assert!(edits.len() >= 3, "{name}: only {} edits apply", edits.len());
    let nodes: Vec<String> = m.lab.state().nodes.iter().map(|n| n.name.clone()).collect();
    for (round, (how, from, to)) in edits.into_iter().enumerate() {
        let broken = valid.replacen(from, to, 1);
        let rejections = |log: &std::path::Path| {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    l.contains("manifest rejected") && l.contains(&format!("applied-{name}.yaml"))
                })
                .count()
        };
        let before = controller_log.as_deref().map(rejections).unwrap_or(0);
        // The lab's own translation (local-file control plane) refuses the folder; the
        // controller reads the file anyway. Either way the broken version is now there.
        let _ = lab::mesh::apply(&m.lab, name, &broken);
        if let Some(log) = &controller_log {
            wait_for(
                &format!("the controller to reject {how}"),
                Duration::from_secs(10),
                || rejections(log) > before,
            );
        }
        // With the controller, a harmless marker applied after the rejection is a barrier:
        // once every ztunnel holds it, whatever the controller made of the broken file has
        // reached them too. With the local-file control plane the folder was refused as a
        // whole, so ztunnel's config did not change at all.
        if controller_log.is_some() {
            let marker = format!("marker-{round}");
            // The lab's own translation still refuses the folder with the broken file in it;
            // the controller reads the marker regardless.
            let _ = lab::mesh::apply(&m.lab, "marker", &e2e::policies::marker(&marker));
            for node in &nodes {
                wait_for(
                    &format!("{node}'s ztunnel to hold {marker}"),
                    Duration::from_secs(10),
                    || m.ztunnel_policies(node).contains(&marker),
                );
            }
        }
        if let Err(e) = still_enforced() {
            panic!("{name} after an invalid edit ({how}) is no longer enforced: {e}");
        }
        if let Some(log) = &controller_log {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let line = text
                .lines()
                .rev()
                .find(|l| {
                    l.contains("manifest rejected") && l.contains(&format!("applied-{name}.yaml"))
                })
                .unwrap();
            assert!(line.contains("stays in force"), "{how}: {line}");
        }
    }
    // Put the valid version back, for the next check.
    let _ = lab::mesh::apply(&m.lab, name, valid);
    if controller_log.is_some() {
        lab::mesh::remove(&m.lab, "marker").unwrap();
    }
}

#[test]
fn invalid_edits_keep_policies_in_force() {
    let m = MeshLab::up("l4", 2);
    let server = addr(m.ip("server-2"), 8080);
    // DENY client-b.
    m.apply_and_wait(
        "deny-client-b",
        DENY_CLIENT_B,
        "client-b to be denied",
        || m.http("client-b", server).is_err(),
    );
    break_and_check(&m, "deny-client-b", DENY_CLIENT_B, || {
        match m.http("client-b", server) {
            Ok(r) => Err(format!("client-b got through to {}", r.pod)),
            Err(_) => Ok(()),
        }
    });
    lab::mesh::remove(&m.lab, "deny-client-b").unwrap();
    wait_for(
        "client-b to be let in again",
        Duration::from_secs(10),
        || m.http("client-b", server).is_ok(),
    );
    // ALLOW only client-a: everyone else, plaintext from outside the mesh included, is out.
    m.apply_and_wait(
        "allow-only-a",
        ALLOW_CLIENT_A,
        "the outsider to be refused",
        || m.http("outsider", server).is_err(),
    );
    break_and_check(&m, "allow-only-a", ALLOW_CLIENT_A, || {
        if let Ok(r) = m.http("outsider", server) {
            return Err(format!("the outsider got through to {}", r.pod));
        }
        if let Ok(r) = m.http("client-b", server) {
            return Err(format!("client-b got through to {}", r.pod));
        }
        m.http("client-a", server)
            .map(|_| ())
            .map_err(|e| format!("client-a refused: {e}"))
    });
    lab::mesh::remove(&m.lab, "allow-only-a").unwrap();
    wait_for(
        "the outsider to be let in again",
        Duration::from_secs(10),
        || m.http("outsider", server).is_ok(),
    );
    // STRICT: no plaintext.
    m.apply_and_wait("strict", STRICT_MESH, "plaintext to be refused", || {
        m.http("outsider", server).is_err()
    });
    break_and_check(&m, "strict", STRICT_MESH, || {
        match m.http("outsider", server) {
            Ok(r) => Err(format!("plaintext got through to {}", r.pod)),
            Err(_) => Ok(()),
        }
    });
}

#[test]
fn a_flood_of_silent_connections_to_15008_hurts_only_the_flooder() {
    let m = MeshLab::up("l4", 2);
    let pid = m.ztunnel_pid("node2");
    let mut live = LiveTunnel::open(&m, "client-a", addr(m.ip("client-b"), 7000));
    let baseline = ProcStats::read(pid);
    // 20,000 connections, or as many as this process may hold (the limit is per process;
    // the ztunnel under attack has at least as many).
    let count = 20_000.min(raise_own_fd_limit().saturating_sub(1_000) as usize);
    let target = addr(m.ip("server-2"), 15008);
    let outsider = m.lab.pod("outsider").unwrap().netns.clone();
    let started = Instant::now();
    let (flood, failed) = lab::netns::run_in(&outsider, || {
        let mut held = Vec::new();
        let mut failed = 0;
        while held.len() + failed < count && started.elapsed() < Duration::from_secs(90) {
            match TcpStream::connect_timeout(&target, Duration::from_millis(500)) {
                Ok(s) => held.push(s),
                Err(_) => failed += 1,
            }
        }
        (held, failed)
    })
    .unwrap();
    let during = ProcStats::read(pid);
    eprintln!(
        "15008 flood: {} silent connections held ({failed} failed) in {:.1} s; node2 ztunnel: {} descriptors (before {}), RSS {} KiB (before {})",
        flood.len(),
        started.elapsed().as_secs_f64(),
        during.fds,
        baseline.fds,
        during.rss_kib,
        baseline.rss_kib
    );
    live.check();
    new_tunnels_work(&m, "during the 15008 flood");
    assert!(
        during.fds < baseline.fds + 1000,
        "the flood holds {} of ztunnel's descriptors",
        during.fds - baseline.fds
    );
    drop(flood);
    wait_for(
        "ztunnel's descriptors back to normal",
        Duration::from_secs(15),
        || ProcStats::read(pid).fds <= baseline.fds + 20,
    );
    live.check();
}

#[test]
fn idle_dns_over_tcp_connections_are_bounded() {
    let m = MeshLab::up("l4", 2);
    let pid = m.ztunnel_pid("node2");
    let mut live = LiveTunnel::open(&m, "client-a", addr(m.ip("client-b"), 7000));
    let baseline = ProcStats::read(pid);
    raise_own_fd_limit();
    let dns_listener = std::net::SocketAddrV4::new([127, 0, 0, 1].into(), 15053);
    let dns = SocketAddr::V4(dns_listener);
    let netns = m.lab.pod("server-2").unwrap().netns.clone();
    // Each says "a 65,535-byte query follows" and then nothing.
    let (held, refused) = lab::netns::run_in(&netns, || {
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..3000 {
            match TcpStream::connect_timeout(&dns, Duration::from_millis(500)) {
                Ok(mut s) => {
                    let _ = s.write_all(&[0xff, 0xff]);
                    held.push(s);
                }
                Err(_) => refused += 1,
            }
        }
        (held, refused)
    })
    .unwrap();
    // Measure once ztunnel has dealt with every connection: taken it or closed it.
    wait_for(
        "ztunnel to take or close every DNS connection",
        Duration::from_secs(15),
        || accept_queue(&netns, dns_listener) == Some(0),
    );
    let during = ProcStats::read(pid);
    eprintln!(
        "DNS/TCP idle flood: {} connections held ({refused} refused); node2 ztunnel: {} descriptors (before {}), RSS {} KiB (before {})",
        held.len(),
        during.fds,
        baseline.fds,
        during.rss_kib,
        baseline.rss_kib
    );
    live.check();
    new_tunnels_work(&m, "during the DNS/TCP flood");
    assert!(
        during.fds < baseline.fds + 200,
        "idle DNS connections hold {} of ztunnel's descriptors",
        during.fds - baseline.fds
    );
    assert!(
        during.rss_kib < baseline.rss_kib + 16 * 1024,
        "idle DNS connections grew ztunnel by {} KiB",
        during.rss_kib - baseline.rss_kib
    );
    // Another pod of the node still resolves.
    let reply = dns_query(&m, "client-b", "server.mesh.svc.cluster.local", 0x4242)
        .expect("client-b's DNS query during the flood");
    assert_eq!(&reply[..2], &[0x42, 0x42]);
    drop(held);
}

fn dns_query(m: &MeshLab, pod: &str, name: &str, id: u16) -> Result<Vec<u8>, String> {
    e2e::dns::exchange(m, pod, dns_message(name, id))
}

fn dns_message(name: &str, id: u16) -> Vec<u8> {
    e2e::dns::message(name, hickory_proto::rr::RecordType::A, id)
}

#[test]
fn a_burst_of_forwarded_dns_queries_is_bounded() {
    let m = MeshLab::up("l4", 2);
    let pid = m.ztunnel_pid("node2");
    let mut live = LiveTunnel::open(&m, "client-a", addr(m.ip("client-b"), 7000));
    // The node's upstream resolver (the lab's root netns) takes queries and never answers:
    // each forwarded query waits for it as long as ztunnel lets it.
    m.signal(lab::cluster::CLUSTER_DNS, "KILL");
    let root = m.lab.state().root_netns.clone();
    let upstream = addr(m.lab.state().root_ip.into(), 53);
    // The port is free once the killed process is gone.
    let swallow = std::cell::RefCell::new(None);
    wait_for(
        "the cluster DNS's port to be free",
        Duration::from_secs(10),
        || {
            let bound = lab::netns::run_in(&root, || UdpSocket::bind(upstream)).unwrap();
            bound.map(|s| *swallow.borrow_mut() = Some(s)).is_ok()
        },
    );
    let swallow = swallow.into_inner().unwrap();
    let baseline = ProcStats::read(pid);
    let netns = m.lab.pod("server-2").unwrap().netns.clone();
    let sent = lab::netns::run_in(&netns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut sent = 0;
        for i in 0..12_000u32 {
            let q = dns_message(&format!("n{i}.example.org"), i as u16);
            if s.send_to(&q, upstream).is_ok() {
                sent += 1;
            }
        }
        (s, sent)
    })
    .unwrap();
    // Sample ztunnel while the forwards are outstanding.
    let mut peak = baseline;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let now = ProcStats::read(pid);
        if now.fds > peak.fds {
            peak = now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "DNS forward burst: {} queries sent; node2 ztunnel peak {} descriptors (before {}), RSS {} KiB (before {})",
        sent.1, peak.fds, baseline.fds, peak.rss_kib, baseline.rss_kib
    );
    live.check();
    new_tunnels_work(&m, "during the DNS forward burst");
    assert!(
        peak.fds < baseline.fds + 300,
        "forwarded queries held {} of ztunnel's descriptors",
        peak.fds - baseline.fds
    );
    // Mesh names are still answered, for another pod of the node.
    let reply = dns_query(&m, "client-b", "server.mesh.svc.cluster.local", 0x4343)
        .expect("client-b's DNS query during the burst");
    assert_eq!(&reply[..2], &[0x43, 0x43]);
    drop(swallow);
}

/// Runs the node's `amesh-cni` by hand, in the node's netns as a runtime would, for a forged
/// sandbox: `CNI_NETNS` = `netns`, the pod `mesh/client-a` (an ambient pod, so the plugin asks
/// ztunnel), its address as the previous plugin's result. Err: the plugin's CNI error.
fn forged_add(m: &MeshLab, node: &lab::NodeInfo, netns: &str) -> Result<(), String> {
    let state = m.lab.state();
    let opts = state.mesh.clone().expect("mesh options");
    let plugin = lab::mesh::cni_plugin(state, &opts, &node.name);
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "lab", "type": "amesh-cni",
        "ztunnel_socket": plugin.ztunnel_socket, "kubeconfig": plugin.kubeconfig,
        "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}],
                       "ips": [{"address": format!("{}/24", m.ip("client-a")), "interface": 0}]},
    });
    let mut cmd = std::process::Command::new(opts.bin_dir.join("amesh-cni"));
    cmd.env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "forged")
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=mesh;K8S_POD_NAME=client-a;K8S_POD_UID=forged",
        )
        .env("CNI_PATH", &opts.bin_dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = lab::process::spawn_piped_in_netns(&node.netns, cmd).unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn cni_add_naming_a_netns_that_is_not_a_pods_is_refused() {
    let m = MeshLab::up("l4", 2);
    let node1 = m.node("node1");
    let ztunnel = node1.ztunnel.clone().expect("node1's ztunnel pod");
    // Paths climbing out of the runtime's /run/netns, as a forged CNI_NETNS would.
    let ztunnel_ns = format!("/run/netns/../../proc/{}/ns/net", m.ztunnel_pid("node1"));
    // The plugin runs where the runtime runs it: in the node's (the host's) netns.
    let host_ns = format!("/run/netns/{}", node1.netns);
    let ztunnel_mnt = format!("/run/netns/../../proc/{}/ns/mnt", m.ztunnel_pid("node1"));
    for (path, why) in [
        (ztunnel_ns.as_str(), "ztunnel's own"),
        (host_ns.as_str(), "the host's"),
        ("/run/netns/../../etc/hostname", "not a network namespace"),
        (ztunnel_mnt.as_str(), "not a network namespace"),
    ] {
        let err =
            forged_add(&m, &node1, path).expect_err(&format!("ADD with netns {path} was accepted"));
        assert!(err.contains(why), "ADD with netns {path}: {err}");
    }
    // Nothing was installed in the node's netns nor in ztunnel's, and the pods are served as
    // before.
    for netns in [&node1.netns, &ztunnel.netns] {
        let rules = lab::cmd::run(
            "nsenter",
            [
                format!("--net=/run/netns/{netns}"),
                "nft".into(),
                "list".into(),
                "ruleset".into(),
            ],
        )
        .unwrap_or_default();
        assert!(
            !rules.contains("table inet amesh"),
            "capture installed in {netns}:\n{rules}"
        );
    }
    let listening = lab::process::listening_ports(m.ztunnel_pid("node1"));
    for port in [15001, 15006, 15008] {
        assert!(
            !listening.contains(&port),
            "ztunnel listens on {port} in its own netns"
        );
    }
    assert_eq!(
        m.http("client-a", addr(m.ip("server-2"), 8080))
            .unwrap()
            .pod,
        "server-2"
    );
}

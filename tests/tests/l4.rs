//! ztunnel L4 scenarios on a two-node lab: HBONE between pods and to service VIPs, metrics,
//! encryption on the wire, PERMISSIVE/STRICT, authorization policy (including closing live
//! connections), DNS, and recovery after ztunnel is killed.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::policies::{ALLOW_CLIENT_A, DENY_CLIENT_B, STRICT_MESH};
use e2e::{addr, wait_for, MeshLab};

const CLIENT_A: &str = "spiffe://cluster.local/ns/mesh/sa/client-a";
const SERVER: &str = "spiffe://cluster.local/ns/mesh/sa/server";

#[test]
fn hbone_same_node_cross_node_and_vip() {
    let m = MeshLab::up("l4", 2);
    let a = m.ip("client-a");
    for server in ["server-1", "server-2"] {
        let reply = m.http("client-a", addr(m.ip(server), 8080)).expect(server);
        assert_eq!(reply.pod, server);
        // The app sees the client pod's own address, not ztunnel's.
        assert_eq!(reply.source.ip(), a, "{server} saw {}", reply.source);
    }
    // The destination ztunnel reports the connection with both identities over mTLS.
    let metrics = lab::mesh::metrics(&m.node("node2")).unwrap();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains(&format!("source_principal=\"{CLIENT_A}\""))
        })
        .unwrap_or_else(|| panic!("no destination metric for client-a on node2:\n{metrics}"));
    assert!(
        line.contains(&format!("destination_principal=\"{SERVER}\"")),
        "{line}"
    );
    assert!(
        line.contains("connection_security_policy=\"mutual_tls\""),
        "{line}"
    );
    assert!(line.contains("destination_workload=\"server-2\""), "{line}");

    // Service VIP traffic reaches every endpoint.
    let vip = addr(m.vip("server"), 80);
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        let reply = m.http("client-a", vip).expect("via VIP");
        assert_eq!(reply.source.ip(), a);
        seen.insert(reply.pod);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "VIP traffic reached only {seen:?}");
    // Connections made to the service are reported with it on the destination side too.
    for node in ["node1", "node2"] {
        let metrics = lab::mesh::metrics(&m.node(node)).unwrap();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("istio_tcp_connections_opened_total{")
                    && l.contains("reporter=\"destination\"")
                    && l.contains("destination_service=\"server.mesh.svc.cluster.local\"")),
            "{node} reports no destination_service for VIP traffic:\n{metrics}"
        );
    }
}

#[test]
fn the_node_link_carries_tls_not_plaintext() {
    let m = MeshLab::up("l4", 2);
    let node2 = m.node("node2");
    let dump = m.lab.run_dir().join("node2.tcpdump.txt");
    let out = std::fs::File::create(&dump).unwrap();
    // Capture on node2 (it forwards between the bridge and its pods) while client-a on node1
    // talks to server-2 on node2. `-A` prints every payload byte that is printable.
    let mut tcpdump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &node2.netns,
            "tcpdump",
            "-i",
            "any",
            "-nn",
            "-l",
            "-A",
            "tcp",
        ])
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump (setup installs it)");
    let err = std::io::BufReader::new(tcpdump.stderr.take().unwrap());
    let mut lines = std::io::BufRead::lines(err);
    let started = lines
        .by_ref()
        .take(5)
        .map_while(Result::ok)
        .any(|l| l.contains("listening on"));
    assert!(started, "tcpdump did not start");
    let marker = format!("AMESH-PLAINTEXT-MARKER-{}", std::process::id());
    let back = m
        .echo("client-a", addr(m.ip("server-2"), 8080), marker.as_bytes())
        .unwrap();
    assert_eq!(back, marker.as_bytes());
    // A grace period for tcpdump to print the last packets, then stop the capture.
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill")
        .args(["-INT", &tcpdump.id().to_string()])
        .status();
    let _ = tcpdump.wait();
    // On exit tcpdump reports "N packets captured" and "M packets received by filter": equal
    // counts prove every packet of the exchange was printed, so the grace above hid nothing.
    let stats: Vec<String> = lines.map_while(Result::ok).collect();
    let count = |what: &str| {
        stats
            .iter()
            .find(|l| l.contains(what))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
    };
    let (captured, received) = (count("packets captured"), count("received by filter"));
    assert!(
        captured.is_some() && captured == received,
        "tcpdump printed {captured:?} of {received:?} packets: {stats:?}"
    );
    let text = std::fs::read_to_string(&dump).unwrap_or_default();
    let hbone = text.lines().filter(|l| l.contains(".15008")).count();
    assert!(
        hbone > 0,
        "no HBONE (port 15008) packets on node2; capture:\n{text}"
    );
    assert!(
        !text.contains(&marker),
        "the payload crossed the node link in plaintext"
    );
    // Header lines read `<time> <iface> <dir> IP <src> > <dst>: ...`: no packet may use the
    // app's port on the node link; it only ever travels inside the tunnel.
    let app_port_packets = text
        .lines()
        .filter(|l| l.contains(" IP "))
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            let i = t.iter().position(|w| *w == "IP")?;
            Some((
                t.get(i + 1)?.to_string(),
                t.get(i + 3)?.trim_end_matches(':').to_string(),
            ))
        })
        .filter(|(src, dst)| src.ends_with(".8080") || dst.ends_with(".8080"))
        .count();
    assert_eq!(
        app_port_packets, 0,
        "app traffic crossed the node link outside the tunnel"
    );
}

#[test]
fn plaintext_is_allowed_under_permissive_and_refused_under_strict() {
    let m = MeshLab::up("l4", 2);
    let server = addr(m.ip("server-2"), 8080);
    let reply = m
        .http("outsider", server)
        .expect("PERMISSIVE admits plaintext");
    assert_eq!(reply.source.ip(), m.ip("outsider"));
    // Ambient → non-ambient: plain TCP passthrough.
    assert_eq!(
        m.echo("client-a", addr(m.ip("outsider"), 7070), b"out")
            .unwrap(),
        b"out"
    );
    m.apply_and_wait("strict", STRICT_MESH, "STRICT to refuse plaintext", || {
        m.http("outsider", server).is_err()
    });
    // mTLS callers are unaffected.
    assert_eq!(m.http("client-a", server).unwrap().pod, "server-2");
}

const DENY_9090: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin-port, namespace: mesh}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - to: [{operation: {ports: ["9090"]}}]
"#;

#[test]
fn allow_by_principal_and_deny_on_a_port() {
    let m = MeshLab::up("l4", 2);
    let http = addr(m.ip("server-1"), 8080);
    let admin = addr(m.ip("server-1"), 9090);
    assert!(m.http("client-b", http).is_ok());
    m.apply_and_wait(
        "allow-a",
        ALLOW_CLIENT_A,
        "ALLOW to refuse client-b",
        || m.http("client-b", http).is_err(),
    );
    assert_eq!(m.http("client-a", http).unwrap().pod, "server-1");
    assert!(m.echo("client-a", admin, b"x").is_ok());
    m.apply_and_wait(
        "deny-9090",
        DENY_9090,
        "DENY on 9090 to win over ALLOW",
        || m.echo("client-a", admin, b"x").is_err(),
    );
    assert!(m.http("client-a", http).is_ok(), "8080 stays allowed");
}

#[test]
fn a_new_deny_closes_an_open_connection() {
    let m = MeshLab::up("l4", 2);
    let mut conn = m
        .lab
        .connect(
            "client-b",
            addr(m.ip("server-2"), 8080),
            Duration::from_secs(10),
        )
        .unwrap();
    conn.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    lab::mesh::apply(&m.lab, "deny-b", DENY_CLIENT_B).unwrap();
    // The open connection is cut: the read ends (reset or EOF) instead of waiting 10 s.
    let mut rest = [0u8; 16];
    let started = std::time::Instant::now();
    let ended = match conn.read(&mut rest) {
        Ok(0) => true,
        Ok(n) => panic!("unexpected {n} bytes"),
        Err(e) => {
            e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut
        }
    };
    assert!(ended, "connection still open after {:?}", started.elapsed());
    assert!(m
        .echo("client-b", addr(m.ip("server-2"), 8080), b"x")
        .is_err());
}

/// The addresses `getent ahosts NAME` prints in `pod` (the pod's resolver, as its apps use it).
fn getent(m: &MeshLab, pod: &str, name: &str) -> BTreeSet<String> {
    let netns = m.lab.pod(pod).unwrap().netns.clone();
    let out = Command::new("ip")
        .args(["netns", "exec", &netns, "getent", "ahosts", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn dns_answers_service_names_with_the_vip() {
    let m = MeshLab::up("l4", 2);
    let vip = m.vip("server").to_string();
    for name in ["server", "server.mesh", "server.mesh.svc.cluster.local"] {
        assert_eq!(
            getent(&m, "client-a", name),
            BTreeSet::from([vip.clone()]),
            "{name}"
        );
    }
    // ztunnel's proxy answered, not the cluster's DNS behind it: its answers are
    // authoritative, with its 30 s TTL (the lab's cluster DNS says 5 s).
    let a = e2e::dns::lookup(&m, "client-a", "server", hickory_proto::rr::RecordType::A).unwrap();
    assert_eq!(a.addresses, [m.vip("server")]);
    assert!(a.authoritative && a.ttl == Some(30), "{a:?}");
}

#[test]
fn dns_answers_a_headless_service_with_its_pods() {
    let m = MeshLab::up("l4", 2);
    let pods = BTreeSet::from([m.ip("server-1").to_string(), m.ip("server-2").to_string()]);
    for name in ["server-pods", "server-pods.mesh.svc.cluster.local"] {
        assert_eq!(getent(&m, "client-a", name), pods, "{name}");
    }
    // A StatefulSet-style name of one pod: `<pod>.<headless service>`.
    assert_eq!(
        getent(
            &m,
            "client-a",
            "server-1.server-pods.mesh.svc.cluster.local"
        ),
        BTreeSet::from([m.ip("server-1").to_string()])
    );
    let a = e2e::dns::lookup(
        &m,
        "client-b",
        "server-pods.mesh.svc.cluster.local",
        hickory_proto::rr::RecordType::A,
    )
    .unwrap();
    assert_eq!(a.addresses.len(), 2);
    assert!(
        a.authoritative && a.ttl == Some(30),
        "ztunnel did not answer: {a:?}"
    );
}

#[test]
fn killed_ztunnel_comes_back_without_rerunning_the_cni() {
    let mut m = MeshLab::up("l4", 2);
    let server = addr(m.ip("server-2"), 8080);
    assert!(m.http("client-a", server).is_ok());
    let node2 = m.node("node2");
    let name = lab::mesh::ztunnel_name("node2");
    m.signal(&name, "KILL");
    wait_for(
        "the killed ztunnel to stop serving",
        Duration::from_secs(10),
        || m.http("client-a", server).is_err(),
    );
    let opts = m.lab.state().mesh.clone().unwrap();
    lab::mesh::start_ztunnel(&mut m.lab, &opts, &node2).unwrap();
    lab::mesh::wait_ready(&node2, Duration::from_secs(30)).unwrap();
    let reply = m
        .http("client-a", server)
        .expect("traffic after the restart");
    assert_eq!(reply.source.ip(), m.ip("client-a"));
    assert!(m.http("client-b", addr(m.ip("server-1"), 8080)).is_ok());
}

#[test]
fn admin_endpoints_and_sigterm_drain() {
    let m = MeshLab::up("l4", 2);
    let node1 = m.node("node1");
    // ztunnel runs in its own pod: the admin port listens on that pod's loopback.
    let ztunnel = node1.ztunnel.clone().expect("node1's ztunnel pod");
    let get = |addr: std::net::SocketAddr, path: &'static str| {
        lab::netns::run_in(&ztunnel.netns, move || lab::mesh::http_get(addr, path))
            .unwrap()
            .unwrap_or_else(|| panic!("no answer on {addr}{path}"))
    };
    let admin: std::net::SocketAddr = "127.0.0.1:15000".parse().unwrap();
    let (status, body) = get(admin, "/config_dump");
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&body).expect("config_dump is JSON");
    let pods = dump["pods"].as_array().expect("pods");
    // node1 captures its ambient pods (client-a, server-1), not the plain outsider.
    let names: BTreeSet<&str> = pods.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, BTreeSet::from(["client-a", "server-1"]));
    let certs = dump["certificates"].as_array().expect("certificates");
    assert!(
        certs.iter().any(|c| c["identity"] == CLIENT_A
            && c["state"] == "Available"
            && c["certChain"][0]["expirationTime"].is_string()
            && c["certChain"][0]["serialNumber"].is_string()),
        "{certs:?}"
    );
    assert!(dump["workloadState"].as_object().is_some_and(|w| w
        .values()
        .any(|p| p["info"]["name"] == "client-a" && p["state"] == "Up")));
    assert!(dump["workloads"].as_array().is_some_and(|w| w.len() >= 5));
    assert_eq!(get(admin, "/logging?level=debug").0, 200);
    assert_eq!(get(admin, "/logging?level=ztunnel=loud").0, 400);
    assert_eq!(get(admin, "/logging?level=access:debug").0, 200);
    assert_eq!(get(admin, "/logging?level=access:loud").0, 400);
    assert_eq!(get(admin, "/logging?reset").0, 200);
    let ready = std::net::SocketAddr::new(ztunnel.ip.into(), 15021);
    assert_eq!(get(ready, "/healthz/ready").0, 200);

    // SIGTERM: ztunnel drains and exits by itself within its deadline.
    let name = lab::mesh::ztunnel_name("node1");
    let pid = m.signal(&name, "TERM");
    wait_for(
        "ztunnel to exit after SIGTERM",
        Duration::from_secs(15),
        || {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| s.split_whitespace().nth(2) == Some("Z"))
                    .unwrap_or(true)
        },
    );
}

#[test]
fn ztunnels_keep_serving_while_the_controller_is_down() {
    let mut m = MeshLab::up("l4", 2);
    let opts = m.lab.state().mesh.clone().unwrap();
    if opts.control_plane != lab::mesh::ControlPlane::Controller {
        eprintln!("skipped: the lab runs without a controller (AMESH_LAB_CONTROL_PLANE=file)");
        return;
    }
    let server = addr(m.ip("server-1"), 8080);
    assert!(m.http("client-b", server).is_ok());
    m.signal(lab::mesh::CONTROLLER, "KILL");
    // Last good config and certificates keep serving, for new connections too.
    for pod in ["client-a", "client-b"] {
        let reply = m.http(pod, server).expect("served without the controller");
        assert_eq!(reply.source.ip(), m.ip(pod));
    }
    // A policy applied while the controller is down takes effect once it is back.
    lab::mesh::apply(&m.lab, "allow-a", ALLOW_CLIENT_A).unwrap();
    assert!(
        m.http("client-b", server).is_ok(),
        "config changed without a controller"
    );
    lab::mesh::start_controller(&mut m.lab, &opts).unwrap();
    wait_for(
        "ztunnels to resync from the restarted controller",
        Duration::from_secs(20),
        || m.http("client-b", server).is_err(),
    );
    assert!(m.http("client-a", server).is_ok());
}

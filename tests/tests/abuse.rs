//! Abuse of every listener a hostile peer or local process can reach, on a two-node lab, each
//! while another pod's tunnel is kept busy: an HTTP/2 rapid reset on one mTLS connection to
//! 15008, random bytes and TLS with the wrong ALPN or no client certificate to 15008,
//! malformed, oversized and flooding DNS datagrams to the DNS proxy, malformed and huge lines
//! on the CNI node-agent socket, and thousands of tunnelled connections held and closed (RSS
//! back near idle). After each, the busy tunnel must have carried every byte, new tunnels must
//! work and the victim ztunnel must be alive, ready and idle. attacks.rs covers the
//! neighbouring attacks (own ports, forged headers, silent floods, forward bursts).
//!
//! Sizes are the smoke run's unless `AMESH_ABUSE_SCALE=full` (the figures: 100,000
//! streams, 10,000 connections); the figures each scenario prints go in the issue notes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use e2e::attacker::{Attacker, TlsVariant, HELD_AFTER};
use e2e::health::{assert_victim_healthy, new_tunnels_work, BusyTunnel};
use e2e::probe::{raise_own_fd_limit, ProcStats};
use e2e::{addr, wait_for, MeshLab};

/// The sizes of one run.
#[derive(Debug)]
struct Scale {
    /// HBONE streams opened and reset on one connection.
    streams: u32,
    /// Attempts of each kind of bad TLS / random bytes.
    bad_sessions: usize,
    /// DNS queries in the flood, and the time they are spread over.
    dns_flood: u32,
    dns_flood_time: Duration,
    /// Tunnelled connections held at once.
    connections: usize,
}

fn scale() -> Scale {
    match std::env::var("AMESH_ABUSE_SCALE").as_deref() {
        Ok("full") => Scale {
            streams: 100_000,
            bad_sessions: 200,
            dns_flood: 20_000,
            dns_flood_time: Duration::from_secs(5),
            connections: 10_000,
        },
        _ => Scale {
            streams: 5_000,
            bad_sessions: 20,
            dns_flood: 5_000,
            dns_flood_time: Duration::from_secs(2),
            connections: 1_000,
        },
    }
}

fn server_identity() -> mesh::Identity {
    mesh::Identity::new("cluster.local", "mesh", "server").unwrap()
}

/// The tunnel kept busy during every scenario: server-1 (node1) to client-b (node2), so it
/// crosses both ztunnels and none of its pods is the attacker's or the target's.
fn busy_tunnel(m: &MeshLab) -> BusyTunnel {
    BusyTunnel::start(m, "server-1", addr(m.ip("client-b"), 7000))
}

#[test]
fn a_rapid_reset_on_one_connection_ends_in_goaway() {
    let scale = scale();
    let m = MeshLab::up("l4", 2);
    let pid = m.ztunnel_pid("node2");
    let baseline = ProcStats::read(pid);
    let busy = busy_tunnel(&m);
    // A compromised workload: client-a's certificate, dialling from the outsider's netns
    // (uncaptured, so the connection goes straight to server-2's 15008).
    let outsider = m.lab.pod("outsider").unwrap().netns.clone();
    let attacker = Attacker::new(&m.lab, &outsider, "mesh", "client-a");
    let server = m.ip("server-2");
    // The first connection carries the whole count; each GOAWAY sends the attacker to a new
    // one (a fresh TLS handshake each time) until the count is written, a bounded number of
    // times: the defence must hold on every connection, not only the first.
    let started = Instant::now();
    let mut sent = 0u32;
    let mut connections = Vec::new();
    while sent < scale.streams && connections.len() < 200 && started.elapsed() < MAX_RESET_TIME {
        let flood = attacker
            .rapid_reset(
                addr(server, 15008),
                &server_identity(),
                &addr(server, 8080).to_string(),
                scale.streams - sent,
                MAX_RESET_TIME,
            )
            .expect("the attacker's connection");
        if connections.is_empty() {
            eprintln!("rapid reset, first connection: {flood:?}");
        }
        sent += flood.sent;
        connections.push(flood);
    }
    let accepted: Vec<u32> = connections
        .iter()
        .map(|f| f.accepted.unwrap_or(u32::MAX))
        .collect();
    eprintln!(
        "rapid reset: {sent} streams opened and reset over {} connections in {:.1} s (of {}); streams ztunnel took before its GOAWAY: max {:?}, total {}; its answers: {} HEADERS, {} RST_STREAM",
        connections.len(),
        started.elapsed().as_secs_f64(),
        scale.streams,
        accepted.iter().max(),
        accepted.iter().map(|&a| u64::from(a)).sum::<u64>(),
        connections.iter().map(|f| f.responses).sum::<u32>(),
        connections.iter().map(|f| f.server_resets).sum::<u32>(),
    );
    new_tunnels_work(&m, "after the rapid reset");
    busy.finish();
    assert_victim_healthy(&m, "node2", pid, baseline, "rapid reset");
    // The defence (h2's, CVE-2023-44487): too many streams reset before the server took them
    // is ENHANCE_YOUR_CALM, and the attacker's connection is over; on every connection.
    for (i, flood) in connections.iter().enumerate() {
        assert_eq!(
            flood.go_away,
            Some(ENHANCE_YOUR_CALM),
            "connection {i}: no GOAWAY ENHANCE_YOUR_CALM after {} reset streams: {flood:?}",
            flood.sent
        );
        assert!(
            flood.accepted < Some(flood.sent),
            "connection {i}: {flood:?}"
        );
        assert!(
            flood.ended.is_some(),
            "connection {i} stayed open: {flood:?}"
        );
    }
}

/// A bound on the rapid-reset run (the full count takes a few seconds when the defence works).
const MAX_RESET_TIME: Duration = Duration::from_secs(120);

/// HTTP/2's error code for a peer that is generating excessive load (RFC 9113 §7).
const ENHANCE_YOUR_CALM: u32 = 0xb;

#[test]
fn random_bytes_and_bad_tls_to_15008_are_closed_at_once() {
    let scale = scale();
    let m = MeshLab::up("l4", 2);
    let pid = m.ztunnel_pid("node2");
    let baseline = ProcStats::read(pid);
    let busy = busy_tunnel(&m);
    let outsider = m.lab.pod("outsider").unwrap().netns.clone();
    let attacker = Attacker::new(&m.lab, &outsider, "mesh", "client-a");
    let hbone = addr(m.ip("server-2"), 15008);
    let variants = [
        ("ALPN http/1.1", Some(TlsVariant::Alpn(b"http/1.1"))),
        ("no ALPN", Some(TlsVariant::NoAlpn)),
        (
            "no client certificate",
            Some(TlsVariant::NoClientCertificate),
        ),
        ("random bytes", None),
    ];
    for (what, variant) in variants {
        let mut slowest = Duration::ZERO;
        let mut last = String::new();
        for i in 0..scale.bad_sessions {
            let ending = match variant {
                Some(v) => attacker.tls_session(hbone, &server_identity(), v),
                // 1 to 64 KiB: a TLS record header of garbage, or many.
                None => attacker.random_bytes(hbone, 1 + (i * 4099) % (64 << 10), i as u64),
            }
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                ending.closed,
                "{what}: ztunnel held the connection for {HELD_AFTER:?} ({ending:?})"
            );
            if variant.is_some() {
                assert_eq!(ending.answered, 0, "{what}: ztunnel answered: {ending:?}");
            }
            slowest = slowest.max(ending.after);
            last = ending.how;
        }
        eprintln!(
            "{what}: {} connections, each closed by ztunnel (slowest after {:.0} ms; last: {last})",
            scale.bad_sessions,
            slowest.as_secs_f64() * 1000.0
        );
    }
    new_tunnels_work(&m, "after bad TLS to 15008");
    busy.finish();
    assert_victim_healthy(&m, "node2", pid, baseline, "bad TLS to 15008");
}

/// A raw DNS datagram from `pod` to its resolver (captured to ztunnel's proxy); the first
/// answer within `wait`, if any.
fn dns_raw(m: &MeshLab, pod: &str, datagram: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let netns = m.lab.pod(pod).unwrap().netns.clone();
    let to = addr(m.lab.state().root_ip.into(), 53);
    let datagram = datagram.to_vec();
    lab::netns::run_in(&netns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
        s.set_read_timeout(Some(wait)).unwrap();
        s.send_to(&datagram, to)
            .unwrap_or_else(|e| panic!("sending {} bytes: {e}", datagram.len()));
        let mut buf = vec![0u8; 65536];
        s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    })
    .expect("enter the pod's netns")
}

fn query(name: &str, id: u16) -> Vec<u8> {
    e2e::dns::message(name, hickory_proto::rr::RecordType::A, id)
}

const MESH_NAME: &str = "server.mesh.svc.cluster.local";

/// `pod` still gets its mesh name answered (UDP: three tries).
fn resolves(m: &MeshLab, pod: &str, id: u16) -> bool {
    (0..3).any(|_| {
        dns_raw(m, pod, &query(MESH_NAME, id), Duration::from_secs(2))
            .is_some_and(|a| a.len() >= 12 && a[..2] == id.to_be_bytes() && a[3] & 0x0f == 0)
    })
}

/// A DNS header: `id`, flags, then QD/AN/NS/AR counts.
fn header(id: u16, flags: u16, qd: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(12);
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&qd.to_be_bytes());
    h.extend_from_slice(&[0; 6]);
    h
}

/// Datagrams no DNS parser should accept, each with what is wrong with it.
fn malformed_datagrams() -> Vec<(&'static str, Vec<u8>)> {
    let with = |mut h: Vec<u8>, rest: &[u8]| {
        h.extend_from_slice(rest);
        h
    };
    // Query type A, class IN, after a name.
    let a_in = [0, 1, 0, 1];
    let mut too_long = Vec::new();
    for _ in 0..5 {
        too_long.push(63);
        too_long.extend_from_slice(&[b'a'; 63]);
    }
    too_long.push(0);
    too_long.extend_from_slice(&a_in);
    vec![
        ("empty datagram", vec![]),
        ("truncated header", vec![0x12, 0x34, 0x01]),
        (
            "header claiming a question it lacks",
            header(0x2001, 0x0100, 1),
        ),
        (
            "label longer than the datagram",
            with(header(0x2002, 0x0100, 1), &[63, b'a', b'b']),
        ),
        (
            "reserved label type (0b10)",
            with(header(0x2003, 0x0100, 1), &[0x80, b'a', 0, 0, 1, 0, 1]),
        ),
        (
            "compression pointer to itself",
            with(header(0x2004, 0x0100, 1), &[0xc0, 12, 0, 1, 0, 1]),
        ),
        (
            "two compression pointers in a loop",
            with(header(0x2005, 0x0100, 1), &[0xc0, 14, 0xc0, 12, 0, 1, 0, 1]),
        ),
        (
            "forward compression pointer past the end",
            with(header(0x2006, 0x0100, 1), &[0xc0, 0xff, 0, 1, 0, 1]),
        ),
        (
            "name over 255 bytes",
            with(header(0x2007, 0x0100, 1), &too_long),
        ),
        (
            "65,535 questions claimed, one given",
            with(header(0x2008, 0x0100, 0xffff), &query(MESH_NAME, 0)[12..]),
        ),
    ]
}

#[test]
fn malformed_oversized_and_flooding_dns_leaves_the_proxy_serving() {
    let scale = scale();
    let m = MeshLab::up("l4", 2);
    let pid = m.ztunnel_pid("node2");
    let baseline = ProcStats::read(pid);
    let busy = busy_tunnel(&m);
    // The attacker is server-2 (node2), captured: its resolver is node2's ztunnel.
    let attacker = "server-2";
    assert!(
        resolves(&m, attacker, 0x0101),
        "no DNS answer before the attack"
    );
    let wait = Duration::from_millis(500);
    for (what, datagram) in malformed_datagrams() {
        let answer = dns_raw(&m, attacker, &datagram, wait);
        eprintln!(
            "DNS {what} ({} bytes): {}",
            datagram.len(),
            match &answer {
                Some(a) if a.len() >= 4 => format!("answered, rcode {}", a[3] & 0x0f),
                Some(a) => format!("answered {} bytes", a.len()),
                None => "no answer".into(),
            }
        );
        // An answer to garbage may only say it is garbage (FORMERR), never answer a name.
        if let Some(a) = answer {
            assert!(
                a.len() >= 12 && matches!(a[3] & 0x0f, 1 | 4),
                "DNS {what}: answered {a:02x?}"
            );
        }
        assert!(
            resolves(&m, attacker, 0x0102),
            "DNS stopped answering after: {what}"
        );
    }
    // A response (QR=1) is not a question: no answer, so no reflection between proxies.
    let mut response = query(MESH_NAME, 0x3001);
    response[2] |= 0x80;
    assert_eq!(
        dns_raw(&m, attacker, &response, Duration::from_secs(1)),
        None,
        "a DNS response was answered"
    );
    // Opcodes other than QUERY: NOTIMP (STATUS, and 15, which no RFC assigns).
    for opcode in [2u8, 15] {
        let mut q = query(MESH_NAME, 0x3100 + u16::from(opcode));
        q[2] = (q[2] & 0x87) | (opcode << 3);
        let a = dns_raw(&m, attacker, &q, Duration::from_secs(2))
            .unwrap_or_else(|| panic!("no answer to opcode {opcode}"));
        assert_eq!(a[..2], q[..2], "opcode {opcode}: the answer's id");
        assert_eq!(
            a[3] & 0x0f,
            4,
            "opcode {opcode}: rcode {} (want NOTIMP)",
            a[3] & 0x0f
        );
    }
    // Oversized: past 512 (no EDNS), past the proxy's 4 KiB buffer, the largest UDP payload.
    for len in [513usize, 4096, 4097, 65_507] {
        let mut padded = query(MESH_NAME, 0x4000 + (len % 1000) as u16);
        padded.resize(len, 0);
        let garbage = e2e::attacker::random(len, len as u64);
        for (what, datagram) in [("padded query", padded), ("random bytes", garbage)] {
            let answer = dns_raw(&m, attacker, &datagram, wait);
            eprintln!(
                "DNS {what} of {len} bytes: {}",
                answer.map_or("no answer".into(), |a| format!("{} bytes back", a.len()))
            );
            assert!(
                resolves(&m, attacker, 0x0103),
                "DNS stopped answering after a {what} of {len} bytes"
            );
        }
    }
    // The flood: queries for a mesh name (answered by the proxy itself) spread over the
    // flood's time, while another pod of the node asks too.
    let netns = m.lab.pod(attacker).unwrap().netns.clone();
    let to = addr(m.lab.state().root_ip.into(), 53);
    let count = scale.dns_flood;
    let spread = scale.dns_flood_time;
    let started = Instant::now();
    let (flood, other) = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            lab::netns::run_in(&netns, move || {
                let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
                let receiver = socket.try_clone().unwrap();
                receiver
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let counter = std::thread::spawn(move || {
                    let mut answered = 0u32;
                    let mut buf = [0u8; 1500];
                    while receiver.recv(&mut buf).is_ok() {
                        answered += 1;
                    }
                    answered
                });
                let mut sent = 0u32;
                for i in 0..count {
                    // Pace to the flood's rate: at most a few ms ahead of the schedule.
                    let due = spread.mul_f64(f64::from(i) / f64::from(count));
                    if let Some(ahead) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(ahead);
                    }
                    if socket.send_to(&query(MESH_NAME, i as u16), to).is_ok() {
                        sent += 1;
                    }
                }
                (sent, counter.join().unwrap())
            })
            .unwrap()
        });
        std::thread::sleep(spread / 2);
        let other = resolves(&m, "client-b", 0x0104);
        (flood.join().unwrap(), other)
    });
    eprintln!(
        "DNS flood: {} of {count} queries sent in {:.1} s, {} answered",
        flood.0,
        spread.as_secs_f64(),
        flood.1
    );
    assert!(other, "client-b got no DNS answer during server-2's flood");
    assert!(flood.1 > 0, "nothing of the flood was answered");
    assert!(
        resolves(&m, attacker, 0x0105),
        "no DNS answer after the flood"
    );
    new_tunnels_work(&m, "after the DNS abuse");
    busy.finish();
    assert_victim_healthy(&m, "node2", pid, baseline, "DNS abuse");
}

/// One line (or any bytes) on `node`'s CNI socket; ztunnel's answer, or how it closed.
fn cni_exchange(m: &MeshLab, node: &str, bytes: Vec<u8>) -> Result<serde_json::Value, String> {
    let path = lab::mesh::cni_socket(m.lab.state(), node);
    let mut stream = UnixStream::connect(&path).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut write_half = stream.try_clone().unwrap();
    // A huge write blocks until ztunnel reads it; it may close first, which ends the write.
    let writer = std::thread::spawn(move || {
        let _ = write_half.write_all(&bytes);
        let _ = write_half.shutdown(std::net::Shutdown::Write);
    });
    let mut line = String::new();
    let got = BufReader::new(&mut stream).read_line(&mut line);
    // Unblock a writer ztunnel stopped reading from.
    let _ = stream.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    match got {
        Ok(0) => Err("closed without an answer".into()),
        Ok(_) => serde_json::from_str(&line).map_err(|e| format!("not JSON ({e}): {line}")),
        Err(e) => Err(format!("read: {e}")),
    }
}

#[test]
fn malformed_and_huge_lines_on_the_cni_socket_get_errors() {
    let mut m = MeshLab::up("l4", 2);
    let pid = m.ztunnel_pid("node2");
    let baseline = ProcStats::read(pid);
    let busy = busy_tunnel(&m);
    let good = serde_json::json!({
        "op": "add", "container_id": "abuse", "uid": "abuse", "name": "abuse",
        "namespace": "mesh", "ip": "10.9.9.9", "netns": "/run/netns/none",
    });
    let mut wrong_types = good.clone();
    wrong_types["ip"] = serde_json::json!(["10.9.9.9"]);
    wrong_types["container_id"] = serde_json::json!(7);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("10 MiB without a newline", vec![b'{'; 10 << 20]),
        ("10 MiB of JSON whitespace then a newline", {
            let mut v = vec![b' '; 10 << 20];
            v.push(b'\n');
            v
        }),
        ("invalid JSON", b"{\"op\": add,,}\n".to_vec()),
        (
            "valid JSON, wrong types",
            format!("{wrong_types}\n").into_bytes(),
        ),
        ("an unknown op", b"{\"op\":\"reboot\"}\n".to_vec()),
        ("not UTF-8", b"\xff\xfe\xfd{\"op\":\"add\"}\n".to_vec()),
        ("an empty line", b"\n".to_vec()),
        (
            "half a request, then EOF",
            b"{\"op\":\"add\",\"uid\":".to_vec(),
        ),
        ("a JSON number", b"12345678901234567890123456789\n".to_vec()),
        ("deeply nested arrays", {
            let mut v = vec![b'['; 60_000];
            v.push(b'\n');
            v
        }),
    ];
    for (what, bytes) in cases {
        let started = Instant::now();
        match cni_exchange(&m, "node2", bytes) {
            Ok(answer) => {
                eprintln!(
                    "CNI socket, {what}: {answer} after {:.0} ms",
                    started.elapsed().as_secs_f64() * 1000.0
                );
                assert_eq!(answer["result"], "error", "CNI socket, {what}: {answer}");
            }
            // Closing on a peer that sends too much is an answer too.
            Err(e) => eprintln!("CNI socket, {what}: {e}"),
        }
    }
    new_tunnels_work(&m, "after the CNI socket abuse");
    busy.finish();
    assert_victim_healthy(&m, "node2", pid, baseline, "CNI socket abuse");
    // A real pod's ADD goes through the same socket: the plugin, ztunnel, capture.
    let pod: k8s_openapi::api::core::v1::Pod = serde_yaml::from_str(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: after-abuse, namespace: mesh}\nspec:\n  serviceAccountName: after-abuse\n  nodeName: node2\n  containers: [{name: c, image: x, ports: [{containerPort: 7000}]}]\n",
    )
    .unwrap();
    let fresh = m.lab.create_pod(pod).expect("a pod's ADD after the abuse");
    let reply = m
        .http("after-abuse", addr(m.ip("server-1"), 8080))
        .expect("the new pod's traffic");
    assert_eq!(reply.source.ip(), std::net::IpAddr::from(fresh.ip));
    assert_eq!(m.ztunnel_pid("node2"), pid, "node2's ztunnel was restarted");
    lab::mesh::wait_ready(&m.node("node2"), Duration::from_secs(5))
        .expect("node2's ztunnel ready after the new pod");
}

/// Opens `count` connections from `pod` to `to` (in its netns, so capture takes them) and
/// checks each is a working tunnel (a line echoed); stops at `limit`.
fn hold_tunnels(
    m: &MeshLab,
    pod: &str,
    to: SocketAddr,
    count: usize,
    limit: Duration,
) -> Vec<TcpStream> {
    let netns = m.lab.pod(pod).unwrap().netns.clone();
    let started = Instant::now();
    let mut held = lab::netns::run_in(&netns, || {
        let mut held = Vec::with_capacity(count);
        while held.len() < count && started.elapsed() < limit {
            match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
                Ok(s) => held.push(s),
                Err(e) => panic!("connection {} of {count}: {e}", held.len() + 1),
            }
        }
        held
    })
    .unwrap();
    // Every connection through: all lines out first, then every echo (the tunnels are
    // opened by ztunnel as the first bytes arrive; one at a time would take minutes).
    let line = b"held\n";
    for (i, s) in held.iter_mut().enumerate() {
        s.write_all(line)
            .unwrap_or_else(|e| panic!("tunnel {i}: writing: {e}"));
    }
    let opened = held.len();
    for (i, s) in held.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("tunnel {i} of {opened}: no echo: {e}"));
        assert_eq!(&got, line, "tunnel {i}");
    }
    held
}

#[test]
fn many_held_tunnels_are_served_and_their_memory_comes_back() {
    let scale = scale();
    // The test holds every client socket; the ztunnels raise their own limit.
    let own_limit = raise_own_fd_limit();
    let count = scale
        .connections
        .min(own_limit.saturating_sub(2_000) as usize);
    let m = MeshLab::up("l4", 2);
    let nodes = ["node1", "node2"];
    let pids = nodes.map(|n| m.ztunnel_pid(n));
    // Idle: the lab up, no traffic yet (a moment for startup allocations to settle).
    std::thread::sleep(Duration::from_secs(2));
    let idle = pids.map(ProcStats::read);
    let busy = busy_tunnel(&m);
    let started = Instant::now();
    let held = hold_tunnels(
        &m,
        "client-a",
        addr(m.ip("server-2"), 8080),
        count,
        Duration::from_secs(300),
    );
    let opened_in = started.elapsed();
    let peak = pids.map(ProcStats::read);
    eprintln!(
        "held tunnels: {} client-a → server-2 connections open and echoing after {:.1} s",
        held.len(),
        opened_in.as_secs_f64()
    );
    for (i, node) in nodes.iter().enumerate() {
        eprintln!(
            "held tunnels: {node} ztunnel RSS idle {} KiB, peak {} KiB; descriptors idle {}, peak {}",
            idle[i].rss_kib, peak[i].rss_kib, idle[i].fds, peak[i].fds
        );
    }
    assert_eq!(held.len(), count, "only {} tunnels opened", held.len());
    new_tunnels_work(&m, "with the tunnels held");
    drop(held);
    let closed = Instant::now();
    // Memory first: ztunnel hands free pages back every second (ztunnel/src/memory.rs), so
    // after a settle time what the closed tunnels used must be gone, within a slack for the
    // busy tunnel's buffers and the pooled connections that have not idled out yet.
    std::thread::sleep(Duration::from_secs(5));
    let settled = pids.map(ProcStats::read);
    let slack_kib = 15 * 1024;
    for (i, node) in nodes.iter().enumerate() {
        eprintln!(
            "held tunnels: {node} ztunnel RSS {} KiB, {} descriptors 5 s after close",
            settled[i].rss_kib, settled[i].fds
        );
        let back = (0..120).find_map(|_| {
            let now = ProcStats::read(pids[i]);
            if now.rss_kib <= idle[i].rss_kib + slack_kib {
                return Some(now);
            }
            std::thread::sleep(Duration::from_secs(1));
            None
        });
        let now = ProcStats::read(pids[i]);
        eprintln!(
            "held tunnels: {node} ztunnel RSS {} KiB {:.1} s after close (idle {} KiB, peak {} KiB)",
            now.rss_kib,
            closed.elapsed().as_secs_f64(),
            idle[i].rss_kib,
            peak[i].rss_kib
        );
        assert!(
            back.is_some(),
            "{node}'s ztunnel kept {} KiB over its idle {} KiB two minutes after the tunnels closed",
            now.rss_kib.saturating_sub(idle[i].rss_kib),
            idle[i].rss_kib
        );
    }
    // Then descriptors: the tunnels' at once, the client side's pooled HBONE connections
    // after their minute idle.
    for (i, node) in nodes.iter().enumerate() {
        wait_for(
            &format!("{node}'s ztunnel to close the held tunnels"),
            Duration::from_secs(120),
            || ProcStats::read(pids[i]).fds <= idle[i].fds + 20,
        );
        eprintln!(
            "held tunnels: {node} ztunnel descriptors back to {} {:.1} s after close",
            ProcStats::read(pids[i]).fds,
            closed.elapsed().as_secs_f64()
        );
    }
    let transfer = busy.finish();
    eprintln!(
        "held tunnels: {count} held, wall time {:.1} s, busy tunnel lost {} bytes",
        started.elapsed().as_secs_f64(),
        transfer.sent - transfer.echoed
    );
    for (i, node) in nodes.iter().enumerate() {
        assert_victim_healthy(&m, node, pids[i], idle[i], "held tunnels");
    }
}

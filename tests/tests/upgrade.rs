//! A rolling ztunnel upgrade, node by node, as the DaemonSet's `RollingUpdate` with
//! `maxUnavailable: 1` does it: SIGTERM, drain, the new binary (a copy, standing for the new
//! release), ready; then the next node. On the two-node `l4` lab (client-a and server-1 on
//! node1, client-b and server-2 on node2), while one node's ztunnel is replaced:
//!
//! - a long-lived connection between two pods of the other node carries every byte, both ways;
//! - a stream of new connections between the other node's pods is served, every one;
//! - the upgrading node's own pods are not served in the gap (no make-before-break handover):
//!   eBPF drops what the pinned program captures (a connect times out), nft's rules redirect
//!   to a port nobody listens on (refused);
//! - once the new ztunnel is ready, its pods' connections work again, both ways and across.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use e2e::{addr, capture_mode, MeshLab};
use lab::client;

/// The echo app's port in every pod.
const ECHO: u16 = 8080;
/// Bytes of each round trip on the long-lived connection.
const ROUND: usize = 4096;
/// Bounds of the background loops, so a broken test still ends: at most this many round
/// trips or connections, each waiting at most [`WAIT`].
const MAX_ROUNDS: usize = 20_000;
const MAX_CONNECTIONS: usize = 2_000;
const WAIT: Duration = Duration::from_secs(5);
/// Pause between two rounds, and between two new connections.
const PACE: Duration = Duration::from_millis(20);
/// The DaemonSet's terminationGracePeriodSeconds.
const GRACE: Duration = Duration::from_secs(30);

/// A background loop, stopped by [`Background::finish`].
struct Background<T> {
    stop: Arc<AtomicBool>,
    /// Rounds (or connections) done so far.
    done: Arc<AtomicUsize>,
    handle: JoinHandle<T>,
}

impl<T> Background<T> {
    /// Waits until the loop has done `more` rounds beyond those done now (or ended).
    fn run_on(&self, more: usize) {
        let target = self.done.load(Ordering::Relaxed) + more;
        while self.done.load(Ordering::Relaxed) < target && !self.handle.is_finished() {
            thread::sleep(PACE);
        }
    }

    fn finish(self) -> T {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("background loop panicked")
    }
}

/// What the long-lived connection saw.
#[derive(Debug)]
struct LongLived {
    rounds: usize,
    sent: u64,
    echoed: u64,
    /// The first failure, if any ended it.
    error: Option<String>,
}

/// One connection from `netns` to `to`, kept open: [`ROUND`] bytes of the echo pattern out,
/// the same bytes expected back, again and again until stopped.
fn long_lived(netns: String, to: SocketAddr) -> Background<LongLived> {
    let mut s = client::connect_in(&netns, to, WAIT).expect("open the long-lived connection");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let done = Arc::new(AtomicUsize::new(0));
    let counter = done.clone();
    let handle = thread::spawn(move || {
        let mut seen = LongLived {
            rounds: 0,
            sent: 0,
            echoed: 0,
            error: None,
        };
        let mut back = vec![0u8; ROUND];
        while !stopped.load(Ordering::Relaxed) && seen.rounds < MAX_ROUNDS {
            let out = lab::echo::pattern::pattern(seen.sent, ROUND);
            if let Err(e) = s.write_all(&out) {
                seen.error = Some(format!("write after {} bytes: {e}", seen.sent));
                break;
            }
            seen.sent += ROUND as u64;
            if let Err(e) = s.read_exact(&mut back) {
                seen.error = Some(format!("read after {} bytes: {e}", seen.echoed));
                break;
            }
            if back[..] != out[..] {
                seen.error = Some(format!("wrong bytes after {}", seen.echoed));
                break;
            }
            seen.echoed += ROUND as u64;
            seen.rounds += 1;
            counter.store(seen.rounds, Ordering::Relaxed);
            thread::sleep(PACE);
        }
        seen
    });
    Background { stop, done, handle }
}

/// New connections from `netns` to `to` one after the other until stopped, each echoing a
/// message of its own; the count made and the failures.
fn new_connections(netns: String, to: SocketAddr) -> Background<(usize, Vec<String>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let done = Arc::new(AtomicUsize::new(0));
    let counter = done.clone();
    let handle = thread::spawn(move || {
        let mut made = 0;
        let mut failures = Vec::new();
        while !stopped.load(Ordering::Relaxed) && made < MAX_CONNECTIONS {
            let msg = format!("new connection {made}");
            match client::tcp_echo_from(&netns, to, msg.as_bytes(), WAIT) {
                Ok(back) if back == msg.as_bytes() => {}
                Ok(back) => failures.push(format!("#{made}: echoed {back:?}")),
                Err(e) => failures.push(format!("#{made}: {e}")),
            }
            made += 1;
            counter.store(made, Ordering::Relaxed);
            thread::sleep(PACE);
        }
        (made, failures)
    });
    Background { stop, done, handle }
}

/// An echo from `pod` to `to`, each step with a short limit: how a new connection fares while
/// the source or destination node has no ztunnel.
fn echo_in_gap(m: &MeshLab, pod: &str, to: SocketAddr) -> Result<(), std::io::Error> {
    let netns = m.lab.pod(pod).unwrap().netns.clone();
    let limit = Duration::from_secs(2);
    let mut s = lab::netns::run_in(&netns, || TcpStream::connect_timeout(&to, limit))
        .expect("enter the pod's netns")?;
    s.set_read_timeout(Some(limit))?;
    s.write_all(b"gap")?;
    let mut one = [0u8; 3];
    s.read_exact(&mut one)
}

/// `pod`'s netns name.
fn netns(m: &MeshLab, pod: &str) -> String {
    m.lab.pod(pod).unwrap().netns.clone()
}

/// Upgrades `node`'s ztunnel to the binary in `bin_dir` while `stay` (a client and a server
/// on the other node) talk; `own` (a client and a server on `node`) checks the gap and the
/// new ztunnel.
fn upgrade_node(
    m: &mut MeshLab,
    node: &str,
    bin_dir: &std::path::Path,
    stay: (&str, &str),
    own: (&str, &str),
) {
    let other = addr(m.ip(stay.1), ECHO);
    let kept = long_lived(netns(m, stay.0), other);
    let fresh = new_connections(netns(m, stay.0), other);
    // Both loops are under way before the node's ztunnel goes.
    kept.run_on(10);
    fresh.run_on(10);

    let old_pid = m.ztunnel_pid(node);
    let stopped = lab::ztunnels::stop(m.lab.state(), node, GRACE).expect("stop the node's ztunnel");
    assert!(
        stopped.drained,
        "{node}'s ztunnel had to be killed: it did not drain and exit within {GRACE:?}"
    );
    assert!(e2e::is_gone(old_pid));

    // The gap: the node's pods are held by their capture but nobody serves it.
    let mode = capture_mode();
    for (from, to) in [
        (own.0, addr(m.ip(own.1), ECHO)),
        (stay.0, addr(m.ip(own.1), ECHO)),
    ] {
        let result = echo_in_gap(m, from, to);
        eprintln!("{mode}: {from} → {to} while {node} has no ztunnel: {result:?}");
        let err = result.expect_err("served while the node had no ztunnel");
        if from == own.0 {
            // The node's own pod, its outbound captured in its netns.
            match mode.as_str() {
                "ebpf" => assert!(
                    matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
                    "eBPF: the pinned program should drop the SYN, not {err}"
                ),
                _ => assert_eq!(
                    err.kind(),
                    ErrorKind::ConnectionRefused,
                    "nft: the redirect to 15001 should be refused, not {err}"
                ),
            }
        }
    }

    let started =
        lab::ztunnels::start(&mut m.lab, node, Some(bin_dir)).expect("start the new ztunnel");
    let exe = std::fs::read_link(format!("/proc/{}/exe", started.pid)).unwrap();
    assert_eq!(exe, bin_dir.join("ztunnel"), "{node} runs the new binary");

    // And go on a while with the new ztunnel in place.
    kept.run_on(10);
    fresh.run_on(10);
    let (made, failures) = fresh.finish();
    let kept = kept.finish();
    eprintln!(
        "{node}: pid {old_pid} drained and exited in {:?}, pid {} ready in {:?}; meanwhile on \
         the other node {made} new connections and {} long-lived round trips",
        stopped.took, started.pid, started.took, kept.rounds
    );
    assert!(made > 0, "no new connection was made on the other node");
    assert!(
        failures.is_empty(),
        "{} of {made} new connections {} → {} failed while {node} upgraded: {failures:?}",
        failures.len(),
        stay.0,
        stay.1
    );
    assert_eq!(
        kept.error, None,
        "the long-lived connection on the other node broke: {kept:?}"
    );
    assert!(kept.rounds > 0);
    assert_eq!(kept.echoed, kept.sent, "{kept:?}");

    // After: the upgraded node's pods talk again, locally, out and in.
    for (from, to) in [(own.0, own.1), (own.0, stay.1), (stay.0, own.1)] {
        let msg = format!("{from} after {node}'s upgrade");
        let back = m
            .echo(from, addr(m.ip(to), ECHO), msg.as_bytes())
            .unwrap_or_else(|e| panic!("{from} → {to} after {node}'s upgrade: {e}"));
        assert_eq!(back, msg.as_bytes());
    }
}

#[test]
fn a_rolling_upgrade_keeps_the_other_nodes_connections_and_serves_each_node_again() {
    let mut m = MeshLab::up("l4", 2);
    // The "new release": a copy of the binary in a directory of its own, in the lab's run
    // directory (removed with the lab).
    let release = m.lab.run_dir().join("ztunnel-next");
    std::fs::create_dir_all(&release).unwrap();
    let current = m.lab.state().mesh.clone().unwrap().bin_dir.join("ztunnel");
    std::fs::copy(&current, release.join("ztunnel")).expect("copy the ztunnel binary");

    upgrade_node(
        &mut m,
        "node1",
        &release,
        ("client-b", "server-2"),
        ("client-a", "server-1"),
    );
    upgrade_node(
        &mut m,
        "node2",
        &release,
        ("client-a", "server-1"),
        ("client-b", "server-2"),
    );
}

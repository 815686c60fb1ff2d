//! What the attack and abuse scenarios check on the mesh around an attack: a tunnel of other
//! pods that must live through it (idle, or kept busy with a transfer whose every byte is
//! counted), new tunnels through the victim ztunnel, and the victim itself (alive, ready, not
//! spinning, not holding on to what the attacker left).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::probe::{cpu_seconds_over, ProcStats};
use crate::{addr, MeshLab};

/// A long-lived tunnel from `pod` to `to`: echoes a line now and on every `check`.
pub struct LiveTunnel {
    stream: TcpStream,
    what: String,
}

impl LiveTunnel {
    pub fn open(m: &MeshLab, pod: &str, to: SocketAddr) -> LiveTunnel {
        let stream = m
            .lab
            .connect(pod, to, Duration::from_secs(5))
            .expect("live tunnel");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut t = LiveTunnel {
            stream,
            what: format!("{pod} → {to}"),
        };
        t.check();
        t
    }

    pub fn check(&mut self) {
        let line = b"still there?\n";
        self.stream
            .write_all(line)
            .unwrap_or_else(|e| panic!("{}: {e}", self.what));
        let mut got = vec![0u8; line.len()];
        self.stream
            .read_exact(&mut got)
            .unwrap_or_else(|e| panic!("{}: the live tunnel broke: {e}", self.what));
        assert_eq!(got, line);
    }
}

/// New tunnels of other pods get through `node2`'s ztunnel: a fresh HBONE connection into
/// the attacked pod, and one into another pod of the node.
pub fn new_tunnels_work(m: &MeshLab, during: &str) {
    for (from, to) in [("client-a", "server-2"), ("client-a", "client-b")] {
        let port = if to == "server-2" { 8080 } else { 7000 };
        let back = m
            .echo(from, addr(m.ip(to), port), b"new tunnel")
            .unwrap_or_else(|e| panic!("{during}: a new tunnel {from} → {to} failed: {e}"));
        assert_eq!(back, b"new tunnel", "{during}: {from} → {to}");
    }
}

/// The node's ztunnel is idle again and holds no more descriptors than before (plus a few
/// for pooled connections): no loop is running on.
pub fn assert_no_loop(m: &MeshLab, node: &str, baseline: ProcStats, attack: &str) {
    let pid = m.ztunnel_pid(node);
    let cpu = cpu_seconds_over(pid, Duration::from_secs(2));
    let now = ProcStats::read(pid);
    eprintln!(
        "{attack}: {node} ztunnel after: {:.2} CPU s over 2 s, {} descriptors (before: {}), RSS {} KiB (before: {})",
        cpu, now.fds, baseline.fds, now.rss_kib, baseline.rss_kib
    );
    assert!(
        cpu < 0.5,
        "{attack}: {node}'s ztunnel kept busy after the client left ({cpu:.2} CPU s in 2 s): a loop"
    );
    assert!(
        now.fds <= baseline.fds + 20,
        "{attack}: {node}'s ztunnel holds {} descriptors, {} before",
        now.fds,
        baseline.fds
    );
}

/// The ztunnel of `node` that was `pid` before the attack is the same process, alive (not a
/// zombie), answers its readiness probe (`:15021/healthz/ready`, as the kubelet asks) and is
/// not spinning nor holding descriptors ([`assert_no_loop`]).
pub fn assert_victim_healthy(m: &MeshLab, node: &str, pid: i32, baseline: ProcStats, attack: &str) {
    assert_eq!(
        m.ztunnel_pid(node),
        pid,
        "{attack}: {node}'s ztunnel was restarted"
    );
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("{attack}: {node}'s ztunnel ({pid}) is gone: {e}"));
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    assert!(
        !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X')),
        "{attack}: {node}'s ztunnel ({pid}) died"
    );
    lab::mesh::wait_ready(&m.node(node), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{attack}: {node}'s ztunnel is not ready: {e}"));
    assert_no_loop(m, node, baseline, attack);
}

/// Bytes the busy tunnel writes per burst, and the pause after each: about 8 MB/s each
/// way, enough to keep a tunnel (and both ztunnels on its path) working all through an attack
/// without taking the two cores the whole lab shares.
const BURST: usize = 16 << 10;
const PAUSE: Duration = Duration::from_millis(2);
/// Bounds on a busy tunnel left running by a test that fails before it finishes it.
const BUSY_MAX_BYTES: u64 = 4 << 30;
const BUSY_MAX_TIME: Duration = Duration::from_secs(900);

/// The byte at offset `at` of a busy tunnel's stream: a pattern that never starts like an
/// HTTP request (the echo app then echoes it raw) and shows a lost, doubled or misplaced byte.
fn pattern(at: u64) -> u8 {
    (at % 251) as u8
}

/// A tunnel between two pods kept busy by a transfer through the echo app: one thread writes
/// a pattern, another reads the echo back and checks every byte. [`BusyTunnel::finish`] ends
/// the transfer and says whether it completed whole.
pub struct BusyTunnel {
    what: String,
    stop: Arc<AtomicBool>,
    started: Instant,
    writer: Option<JoinHandle<Result<u64, String>>>,
    reader: Option<JoinHandle<Result<u64, String>>>,
}

/// What a busy tunnel carried.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// Bytes written into the tunnel.
    pub sent: u64,
    /// Bytes echoed back, each checked against the pattern.
    pub echoed: u64,
    pub elapsed: Duration,
}

impl BusyTunnel {
    /// Starts the transfer from `pod` to the echo app at `to`.
    pub fn start(m: &MeshLab, pod: &str, to: SocketAddr) -> BusyTunnel {
        let what = format!("busy tunnel {pod} → {to}");
        let stream = m
            .lab
            .connect(pod, to, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        // An echo that stops for this long is a broken tunnel, not a slow one.
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut read_half = stream.try_clone().expect("clone the busy tunnel's socket");
        let mut write_half = stream;
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut sent = 0u64;
                let mut chunk = vec![0u8; BURST];
                while !stop.load(Ordering::Relaxed)
                    && sent < BUSY_MAX_BYTES
                    && started.elapsed() < BUSY_MAX_TIME
                {
                    for (i, b) in chunk.iter_mut().enumerate() {
                        *b = pattern(sent + i as u64);
                    }
                    write_half
                        .write_all(&chunk)
                        .map_err(|e| format!("writing after {sent} bytes: {e}"))?;
                    sent += BURST as u64;
                    std::thread::sleep(PAUSE);
                }
                // The echo app answers EOF with EOF once it has echoed everything.
                write_half
                    .shutdown(Shutdown::Write)
                    .map_err(|e| format!("closing the write side: {e}"))?;
                Ok(sent)
            })
        };
        let reader = std::thread::spawn(move || {
            let mut echoed = 0u64;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = read_half
                    .read(&mut buf)
                    .map_err(|e| format!("reading after {echoed} bytes: {e}"))?;
                if n == 0 {
                    return Ok(echoed);
                }
                if let Some(i) = (0..n).find(|&i| buf[i] != pattern(echoed + i as u64)) {
                    return Err(format!("byte {} of the echo is wrong", echoed + i as u64));
                }
                echoed += n as u64;
            }
        });
        BusyTunnel {
            what,
            stop,
            started,
            writer: Some(writer),
            reader: Some(reader),
        }
    }

    /// Stops writing and waits for the echo of everything written; panics unless every byte
    /// came back, in order, followed by a clean end.
    pub fn finish(mut self) -> Transfer {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.join_writer();
        let echoed = self
            .reader
            .take()
            .expect("finished once")
            .join()
            .expect("the busy tunnel's reader panicked")
            .unwrap_or_else(|e| panic!("{}: {e}", self.what));
        let transfer = Transfer {
            sent,
            echoed,
            elapsed: self.started.elapsed(),
        };
        eprintln!(
            "{}: {} bytes sent, {} echoed, {} lost, over {:.1} s",
            self.what,
            sent,
            echoed,
            sent.saturating_sub(echoed),
            transfer.elapsed.as_secs_f64()
        );
        assert_eq!(
            echoed, sent,
            "{}: {} of {sent} bytes came back",
            self.what, echoed
        );
        assert!(sent > 0, "{}: nothing was sent", self.what);
        transfer
    }

    fn join_writer(&mut self) -> u64 {
        self.writer
            .take()
            .expect("finished once")
            .join()
            .expect("the busy tunnel's writer panicked")
            .unwrap_or_else(|e| panic!("{}: {e}", self.what))
    }
}

impl Drop for BusyTunnel {
    // A test that fails before `finish` still stops its writer (the reader then ends with the
    // echo's EOF or its read timeout).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

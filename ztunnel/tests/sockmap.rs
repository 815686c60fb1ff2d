//! In-pod hops through SOCKMAP (`capture::sockmap`) with the real programs on the real cgroup
//! root, in a real network namespace: the two shapes of hop (the app's steered outbound
//! connection to ztunnel's outbound socket, ztunnel's original-source connection to the app)
//! join the hash with both ends and their bytes skip loopback, while other sockets do not
//! join; and the relay's semantics hold over them: exact bytes both ways, FIN after every
//! byte and in one direction only, RST as RST, a slow reader holding the writer back, and
//! what `splice(2)` sees of redirected bytes.
//!
//! Needs root; namespaces are named `amt-hops-<pid>-<test>`, deleted on drop, and those of a
//! crashed earlier run (its pid gone) are deleted first.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use ebpf_common::hops::HopKey;
use socket2::{Domain, Socket, Type};
use ztunnel::capture::sockmap::{socket_netns_cookie, Hops};
use ztunnel::netns::Netns;

const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 2);
/// Where the app's outbound connection goes (local in the test netns, as the capture's
/// policy route makes every destination).
const REMOTE_IP: Ipv4Addr = Ipv4Addr::new(10, 251, 9, 9);
/// The client address ztunnel's inbound connection comes from.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 251, 1, 1);
const MARK: u32 = 0x539;
const TIMEOUT: Duration = Duration::from_secs(10);

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the namespaces of earlier runs whose process is gone.
fn reap_crashed_runs() {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("amt-hops-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// A pod-like netns: the pod's, the remote's and the client's addresses on loopback.
struct Bed {
    name: String,
    netns: Netns,
}

impl Bed {
    fn new(test: &str) -> Bed {
        reap_crashed_runs();
        let name = format!("amt-hops-{}-{test}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        for ip in [POD_IP, REMOTE_IP, CLIENT_IP] {
            let cidr = format!("{ip}/32");
            run("ip", &["-n", &name, "addr", "add", &cidr, "dev", "lo"]);
        }
        let netns = Netns::open(&PathBuf::from(format!("/var/run/netns/{name}")))
            .expect("opening the test netns");
        Bed { name, netns }
    }

    fn listener(&self, ip: Ipv4Addr, port: u16, mark: Option<u32>) -> TcpListener {
        self.netns
            .run(|| {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                if let Some(mark) = mark {
                    s.set_mark(mark)?;
                }
                s.set_reuse_address(true)?;
                s.bind(&SocketAddr::from((ip, port)).into())?;
                s.listen(16)?;
                Ok(s.into())
            })
            .expect("listening in the test netns")
    }

    fn connect(&self, from: Ipv4Addr, to: SocketAddr, mark: Option<u32>) -> TcpStream {
        self.netns
            .run(|| {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                if let Some(mark) = mark {
                    s.set_mark(mark)?;
                }
                s.bind(&SocketAddr::from((from, 0)).into())?;
                s.connect(&to.into())?;
                Ok(s.into())
            })
            .expect("connecting in the test netns")
    }

    /// The app's outbound hop: (app's socket, ztunnel's accepted socket).
    fn outbound_hop(&self, port: u16) -> (TcpStream, TcpStream) {
        let listener = self.listener(REMOTE_IP, port, Some(MARK));
        let app = self.connect(POD_IP, SocketAddr::from((REMOTE_IP, port)), None);
        let (ztunnel, _) = listener.accept().unwrap();
        (app, ztunnel)
    }

    /// ztunnel's inbound hop: (ztunnel's socket, the app's accepted socket).
    fn inbound_hop(&self, port: u16) -> (TcpStream, TcpStream) {
        let listener = self.listener(POD_IP, port, None);
        let ztunnel = self.connect(CLIENT_IP, SocketAddr::from((POD_IP, port)), Some(MARK));
        let (app, _) = listener.accept().unwrap();
        (ztunnel, app)
    }

    /// Bytes sent on the netns' loopback device so far.
    fn loopback_tx_bytes(&self) -> u64 {
        let dev = self
            .netns
            .run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))
            .unwrap();
        let line = dev
            .lines()
            .find(|l| l.trim_start().starts_with("lo:"))
            .expect("lo in /proc/net/dev");
        // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit.
        let fields: Vec<&str> = line.split(':').nth(1).unwrap().split_whitespace().collect();
        fields[8].parse().unwrap()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn key_of(s: &TcpStream) -> HopKey {
    let (SocketAddr::V4(l), SocketAddr::V4(r)) = (s.local_addr().unwrap(), s.peer_addr().unwrap())
    else {
        panic!("IPv4 only");
    };
    let ip = |a: &SocketAddrV4| u32::from_ne_bytes(a.ip().octets());
    HopKey {
        netns_cookie: socket_netns_cookie(s).unwrap(),
        local_ip4: ip(&l),
        remote_ip4: ip(&r),
        local_port: u32::from(l.port()),
        remote_port: u32::from(r.port()),
    }
}

/// Waits until `check` holds (the passive end's callback runs in the kernel's receive path,
/// a moment after `connect` returns).
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Sends `data` on `from` and reads exactly as much on `to`, both at once.
fn transfer(from: &TcpStream, to: &TcpStream, data: &[u8]) {
    let mut from = from.try_clone().unwrap();
    let mut to = to.try_clone().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| from.write_all(data).unwrap());
        let mut got = vec![0u8; data.len()];
        to.set_read_timeout(Some(TIMEOUT)).unwrap();
        to.read_exact(&mut got).unwrap();
        assert!(got == data, "the bytes arrived changed");
    });
}

fn load(bed: &Bed) -> Hops {
    let hops = Hops::load(None).expect("loading the hop programs");
    hops.add(&bed.netns, POD_IP, MARK).unwrap();
    hops
}

#[test]
fn both_ends_of_each_hop_join_and_their_bytes_skip_loopback() {
    let bed = Bed::new("join");
    let hops = load(&bed);
    let (app_out, zt_out) = bed.outbound_hop(80);
    let (zt_in, app_in) = bed.inbound_hop(8080);
    let ends = [&app_out, &zt_out, &zt_in, &app_in].map(key_of);
    eventually("both ends of both hops in the hash", || {
        let now = hops.ends();
        ends.iter().all(|k| now.contains(k))
    });

    let before = bed.loopback_tx_bytes();
    let size = 16 << 20;
    let (a, b) = (pattern(size, 1), pattern(size, 2));
    std::thread::scope(|s| {
        s.spawn(|| transfer(&app_out, &zt_out, &a));
        s.spawn(|| transfer(&zt_out, &app_out, &b));
        s.spawn(|| transfer(&zt_in, &app_in, &a));
        s.spawn(|| transfer(&app_in, &zt_in, &b));
    });
    let moved = 4 * size as u64;
    let on_loopback = bed.loopback_tx_bytes() - before;
    // Without the redirect every byte crosses loopback (plus headers); with it only ACK-less
    // silence does: the data never becomes packets.
    assert!(
        on_loopback < moved / 100,
        "{on_loopback} bytes crossed loopback for {moved} moved"
    );

    // Not hops: the app calling itself, loopback, and ztunnel's own marked socket to
    // somewhere that is not the pod.
    let self_listener = bed.listener(POD_IP, 9000, None);
    let own = bed.connect(POD_IP, SocketAddr::from((POD_IP, 9000)), None);
    let (own_peer, _) = self_listener.accept().unwrap();
    let lo_listener = bed.listener(Ipv4Addr::LOCALHOST, 9001, None);
    let lo = bed.connect(
        Ipv4Addr::LOCALHOST,
        SocketAddr::from(([127, 0, 0, 1], 9001)),
        None,
    );
    let (lo_peer, _) = lo_listener.accept().unwrap();
    let up_listener = bed.listener(REMOTE_IP, 9002, None);
    let up = bed.connect(POD_IP, SocketAddr::from((REMOTE_IP, 9002)), Some(MARK));
    let (up_peer, _) = up_listener.accept().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let now = hops.ends();
    for s in [&own, &own_peer, &lo, &lo_peer, &up, &up_peer] {
        assert!(!now.contains(&key_of(s)), "{:?} joined", s.local_addr());
    }
    transfer(&own, &own_peer, &a[..1 << 20]);
}

#[test]
fn a_netns_that_is_not_captured_is_left_alone() {
    let bed = Bed::new("alone");
    let hops = Hops::load(None).expect("loading the hop programs");
    let (app, ztunnel) = bed.outbound_hop(80);
    std::thread::sleep(Duration::from_millis(100));
    assert!(hops
        .ends()
        .iter()
        .all(|k| *k != key_of(&app) && *k != key_of(&ztunnel)));

    // Captured, then released: new connections stay plain.
    hops.add(&bed.netns, POD_IP, MARK).unwrap();
    hops.remove(bed.netns.inode());
    let (app, ztunnel) = bed.outbound_hop(81);
    std::thread::sleep(Duration::from_millis(100));
    assert!(hops
        .ends()
        .iter()
        .all(|k| *k != key_of(&app) && *k != key_of(&ztunnel)));
    transfer(&app, &ztunnel, &pattern(1 << 20, 3));
}

#[test]
fn fin_passes_after_every_byte_and_one_way_only() {
    let bed = Bed::new("fin");
    let hops = load(&bed);
    let (mut app, mut ztunnel) = bed.outbound_hop(80);
    eventually("the hop in the hash", || {
        hops.ends().contains(&key_of(&ztunnel))
    });
    let request = pattern(3 << 20, 4);
    app.write_all(&request).unwrap();
    app.shutdown(Shutdown::Write).unwrap();
    ztunnel.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut got = Vec::new();
    ztunnel.read_to_end(&mut got).unwrap();
    assert!(
        got == request,
        "{} of {} bytes before the FIN",
        got.len(),
        request.len()
    );
    // The other direction is still open.
    let response = pattern(2 << 20, 5);
    transfer(&ztunnel, &app, &response);
    ztunnel.shutdown(Shutdown::Write).unwrap();
    app.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut rest = Vec::new();
    assert_eq!(app.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn an_abort_arrives_as_a_reset() {
    let bed = Bed::new("rst");
    let hops = load(&bed);
    let (ztunnel, mut app) = bed.inbound_hop(8080);
    eventually("the hop in the hash", || {
        hops.ends().contains(&key_of(&app))
    });
    let sock = Socket::from(ztunnel);
    sock.set_linger(Some(Duration::ZERO)).unwrap();
    let mut ztunnel = TcpStream::from(sock);
    ztunnel.write_all(b"partial").unwrap();
    drop(ztunnel);
    app.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    let err = loop {
        match app.read(&mut buf) {
            Ok(0) => panic!("an abort arrived as a FIN"),
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
}

/// The kernel's limit that keeps `AMESH_SOCKMAP` off by default: bytes redirected into a
/// socket's receive side are charged to no receive buffer, so a writer to a reader that reads
/// nothing never meets EAGAIN (TCP would stop it after a few MiB). Nothing is lost, though.
/// If this fails because the writer was held back, the kernel now bounds the queue and the
/// default can be reconsidered.
#[test]
fn a_reader_that_reads_nothing_does_not_stop_the_writer_and_loses_nothing() {
    let bed = Bed::new("slow");
    let hops = load(&bed);
    let (ztunnel, mut app) = bed.inbound_hop(8080);
    eventually("the hop in the hash", || {
        hops.ends().contains(&key_of(&app))
    });
    ztunnel.set_nonblocking(true).unwrap();
    let chunk = pattern(64 << 10, 6);
    let mut written = 0usize;
    let limit = 64 << 20;
    let mut w = &ztunnel;
    while written < limit {
        match w.write(&chunk) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        written, limit,
        "the writer was held back after {written} bytes: the kernel bounds redirected bytes now"
    );
    ztunnel.set_nonblocking(false).unwrap();
    drop(ztunnel);
    app.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut got = Vec::new();
    app.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), written);
    assert!(got.chunks(chunk.len()).all(|c| c == &chunk[..c.len()]));
}

/// What a relay that splices must know: `splice(2)` from a hop end does not see the bytes the
/// other end's `sendmsg` put there (they wait in the psock's own queue, beside the receive
/// queue that splice reads), while a `MSG_PEEK` does. `mesh::hbone::relay_tcp` peeks before it
/// believes a socket is empty, and copies from then on.
#[test]
fn splice_does_not_see_redirected_bytes_and_a_peek_does() {
    let bed = Bed::new("splice");
    let hops = load(&bed);
    let (mut ztunnel, app) = bed.inbound_hop(8080);
    eventually("the hop in the hash", || {
        hops.ends().contains(&key_of(&app))
    });
    let sent = b"hello through the hop";
    ztunnel.write_all(sent).unwrap();
    app.set_nonblocking(true).unwrap();
    eventually("the bytes at the app's socket", || {
        let mut peek = [0u8; 64];
        // SAFETY: a valid buffer of the length given.
        let n = unsafe {
            libc::recv(
                app.as_raw_fd(),
                peek.as_mut_ptr().cast(),
                peek.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n == sent.len() as isize
    });
    let mut pipe = [0i32; 2];
    // SAFETY: a two-descriptor array for pipe2.
    assert_eq!(
        unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_NONBLOCK) },
        0
    );
    // SAFETY: valid descriptors, null offsets (sockets and pipes have none).
    let n = unsafe {
        libc::splice(
            app.as_raw_fd(),
            std::ptr::null_mut(),
            pipe[1],
            std::ptr::null_mut(),
            1 << 16,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: the pipe's own descriptors, closed once.
    unsafe {
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }
    assert!(
        n == -1 && err.kind() == ErrorKind::WouldBlock,
        "splice from a hop end gave {n} ({err}): the kernel now splices redirected bytes"
    );
    // The bytes are still there for a plain read.
    let mut got = [0u8; 64];
    let mut app = &app;
    assert_eq!(app.read(&mut got).unwrap(), sent.len());
    assert_eq!(&got[..sent.len()], sent);
}

/// The kernel's second limit: a reader already blocked in `read` on a hop end when the reset
/// arrives is woken with EAGAIN, not ECONNRESET (tcp_bpf's receive path returns EAGAIN when a
/// wake-up finds nothing in its queue, blocking socket or not). A non-blocking reader such as
/// ztunnel retries and then sees the reset; an app that reads blocking sees an error that
/// blocking sockets never give. The e2e suite's apps fail this way with `AMESH_SOCKMAP=on`.
#[test]
fn a_blocked_reader_is_woken_by_a_reset_with_eagain() {
    let bed = Bed::new("blocked");
    let hops = load(&bed);
    let (ztunnel, mut app) = bed.inbound_hop(8080);
    eventually("the hop in the hash", || {
        hops.ends().contains(&key_of(&app))
    });
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        app.read(&mut buf)
    });
    // Let the reader block first.
    std::thread::sleep(Duration::from_millis(200));
    let sock = Socket::from(ztunnel);
    sock.set_linger(Some(Duration::ZERO)).unwrap();
    drop(sock);
    let got = reader.join().unwrap();
    let kind = got.as_ref().map_err(|e| e.kind()).err();
    assert_eq!(
        kind,
        Some(ErrorKind::WouldBlock),
        "a blocked reader saw {got:?}: the kernel now reports the reset itself"
    );
}

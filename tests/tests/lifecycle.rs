//! ztunnel's lifecycle as the apps see it, on a two-node lab (client-a on node1 talks to
//! server-2 on node2 over HBONE): a transfer cut by a ztunnel's death (kill -9, either side)
//! ends with a reset in both apps, never with a clean end short of its bytes; and a SIGTERM
//! lets a live transfer finish, every byte and a clean end, while new connections are refused.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use e2e::{addr, wait_for, MeshLab};

/// The port of the test's own app in server-2 (the lab's echo app does not use it).
const PORT: u16 = 7300;
/// Chunks a sender writes, and the most it writes: far more than is in flight when a ztunnel
/// is killed, so the transfer is cut mid-way, and bounded so a broken test still ends.
const CHUNK: usize = 64 << 10;
const MAX_CHUNKS: usize = 16 << 10;
/// Bytes the reader takes before the test kills a ztunnel.
const BEFORE_KILL: u64 = 16 << 20;
/// Bound on every wait of these tests.
const LIMIT: Duration = Duration::from_secs(30);

/// How one side's part of a transfer ended.
#[derive(Debug)]
enum End {
    /// A clean end (EOF) after so many bytes.
    Clean(u64),
    /// An error after so many bytes.
    Error(u64, std::io::Error),
}

/// A listener inside `pod`'s netns on [`PORT`].
fn listen_in(m: &MeshLab, pod: &str) -> TcpListener {
    let bind = SocketAddr::new(m.ip(pod), PORT);
    m.lab
        .run_in_pod(pod, move || TcpListener::bind(bind))
        .expect("enter the pod's netns")
        .expect("bind the test app's port")
}

/// Accepts one connection on `listener`, giving up after [`LIMIT`].
fn accept_one(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + LIMIT;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(LIMIT)).unwrap();
                s.set_write_timeout(Some(LIMIT)).unwrap();
                keep_alive(&s);
                return s;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("the test app got no connection: {e}"),
        }
    }
}

/// Reads until EOF or an error, telling `progress` once [`BEFORE_KILL`] bytes are in.
fn read_all(s: &mut TcpStream, progress: Option<mpsc::Sender<()>>) -> End {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    let mut progress = progress;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return End::Clean(total),
            Ok(n) => total += n as u64,
            Err(e) => return End::Error(total, e),
        }
        if total >= BEFORE_KILL {
            if let Some(tx) = progress.take() {
                let _ = tx.send(());
            }
        }
    }
}

/// Writes up to [`MAX_CHUNKS`] chunks, pausing `pace` between them; the bytes written, and the
/// error that stopped it if one did.
fn write_all(s: &mut TcpStream, chunks: usize, pace: Duration) -> (u64, Option<std::io::Error>) {
    let chunk = vec![0x5au8; CHUNK];
    let mut total = 0u64;
    for _ in 0..chunks.min(MAX_CHUNKS) {
        if let Err(e) = s.write_all(&chunk) {
            return (total, Some(e));
        }
        total += CHUNK as u64;
        if !pace.is_zero() {
            thread::sleep(pace);
        }
    }
    (total, None)
}

/// Whether `e` is how a reset shows: the kernel's answer to a peer's RST.
fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
    )
}

/// Kills `node`'s ztunnel with SIGKILL and waits until the process is gone.
fn kill_ztunnel(m: &MeshLab, node: &str) {
    let pid = m.signal(&lab::mesh::ztunnel_name(node), "KILL");
    wait_for("the killed ztunnel to be gone", LIMIT, || exited(pid));
}

/// Starts `node`'s ztunnel again (so the lab tears down as usual) and waits until it is ready.
fn restart_ztunnel(m: &mut MeshLab, node: &str) {
    let info = m.node(node);
    let opts = m.lab.state().mesh.clone().expect("a mesh lab");
    lab::mesh::start_ztunnel(&mut m.lab, &opts, &info).expect("restart ztunnel");
    lab::mesh::wait_ready(&info, LIMIT).expect("restarted ztunnel ready");
}

/// Whether process `pid` has exited (gone, or a zombie waiting for the lab to reap it).
fn exited(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2) == Some("Z"))
        .unwrap_or(true)
}

/// A connection from client-a to the test app in server-2, through the mesh.
fn connect(m: &MeshLab, server: SocketAddr) -> TcpStream {
    let s = m
        .lab
        .connect("client-a", server, LIMIT)
        .expect("connect from client-a");
    s.set_write_timeout(Some(LIMIT)).unwrap();
    keep_alive(&s);
    s
}

/// TCP keepalive after 2 s of silence, then every second, as a long-lived app would set it.
///
/// Why the tests need it: a killed ztunnel's reset is one packet, and the kernel takes it only
/// if its sequence number is exactly the next expected one. When the app's kernel had dropped
/// the last segments in flight (its receive backlog full, which happens under load), the reset
/// lands out of sequence and the kernel answers with a challenge ACK instead; under eBPF
/// capture that ACK meets the dead ztunnel's capture, whose listener is gone, and is dropped.
/// An app that only reads then learns of the cut from its next packet: a keepalive probe, which
/// the restarted ztunnel's listener answers with a reset.
fn keep_alive(s: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(2))
        .with_interval(Duration::from_secs(1))
        .with_retries(20);
    socket2::SockRef::from(s).set_tcp_keepalive(&ka).unwrap();
}

#[test]
fn killing_the_source_ztunnel_resets_the_client_mid_download() {
    let mut m = MeshLab::up("l4", 2);
    let listener = listen_in(&m, "server-2");
    let server = addr(m.ip("server-2"), PORT);
    let mut client = connect(&m, server);
    // server-2 streams to client-a until its writes fail.
    let sender = thread::spawn(move || {
        let mut s = accept_one(&listener);
        write_all(&mut s, MAX_CHUNKS, Duration::ZERO)
    });
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || read_all(&mut client, Some(tx)));
    rx.recv_timeout(LIMIT)
        .expect("the download never got going");
    kill_ztunnel(&m, "node1");
    // Back at once, as the DaemonSet brings it back (see `keep_alive` for why the apps need it).
    restart_ztunnel(&mut m, "node1");

    let end = reader.join().unwrap();
    let (sent, send_error) = sender.join().unwrap();
    match end {
        End::Error(_, e) => assert!(is_reset(&e), "the client saw {e}, not a reset"),
        End::Clean(read) => panic!(
            "the client saw a clean end after {read} of the {} bytes the server meant to send",
            MAX_CHUNKS * CHUNK
        ),
    }
    // The server learns of it too, rather than writing into the void until it is done.
    assert!(
        send_error.is_some(),
        "the server wrote all {sent} bytes of a transfer that was cut"
    );
}

#[test]
fn killing_the_destination_ztunnel_resets_both_apps_mid_upload() {
    let mut m = MeshLab::up("l4", 2);
    let listener = listen_in(&m, "server-2");
    let server = addr(m.ip("server-2"), PORT);
    let mut client = connect(&m, server);
    // client-a streams to server-2; should it get to the end, it asks for the count back.
    let sender = thread::spawn(move || {
        let (sent, error) = write_all(&mut client, MAX_CHUNKS, Duration::ZERO);
        if let Some(e) = error {
            return End::Error(sent, e);
        }
        let _ = client.shutdown(Shutdown::Write);
        client.set_read_timeout(Some(LIMIT)).unwrap();
        read_all(&mut client, None)
    });
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut s = accept_one(&listener);
        read_all(&mut s, Some(tx))
    });
    rx.recv_timeout(LIMIT).expect("the upload never got going");
    kill_ztunnel(&m, "node2");
    // Back at once, as the DaemonSet brings it back (see `keep_alive` for why the apps need it).
    restart_ztunnel(&mut m, "node2");

    let server_end = reader.join().unwrap();
    let client_end = sender.join().unwrap();
    match server_end {
        End::Error(_, e) => assert!(is_reset(&e), "the server saw {e}, not a reset"),
        End::Clean(read) => panic!(
            "the server saw a clean end after {read} of the {} bytes the client meant to send",
            MAX_CHUNKS * CHUNK
        ),
    }
    match client_end {
        End::Error(_, e) => assert!(is_reset(&e), "the client saw {e}, not a reset"),
        End::Clean(read) => panic!("the client saw a clean end ({read} bytes back)"),
    }
}

#[test]
fn sigterm_lets_a_live_transfer_finish_and_refuses_new_connections() {
    // A deadline well past the transfer's remaining time after SIGTERM (about 2 s; the lab's
    // default is ztunnel's, 5 s).
    let mut m = MeshLab::up_with("l4", 2, |o| {
        if let Some(mesh) = o.mesh.as_mut() {
            mesh.ztunnel_env
                .push(("DRAIN_DEADLINE_SECONDS".into(), "10".into()));
        }
    });
    let listener = listen_in(&m, "server-2");
    let server = addr(m.ip("server-2"), PORT);
    // Before: the test app is reachable.
    let mut probe = connect(&m, server);
    let probe_server = accept_one(&listener);
    probe.write_all(b"x").unwrap();
    drop((probe, probe_server));

    // client-a uploads at a steady pace for about 3.5 s, then half-closes and waits for the
    // server's count of what arrived.
    const CHUNKS: usize = 350;
    let pace = Duration::from_millis(10);
    let client = connect(&m, server);
    let sender = upload_then_read_count(client, CHUNKS, pace);
    let receiver = thread::spawn(move || {
        let mut s = accept_one(&listener);
        let end = read_all(&mut s, None);
        if let End::Clean(n) = &end {
            let _ = s.write_all(n.to_string().as_bytes());
        }
        end
    });
    thread::sleep(Duration::from_secs(1));
    let pid = m.signal(&lab::mesh::ztunnel_name("node1"), "TERM");
    thread::sleep(Duration::from_millis(300));
    assert!(!exited(pid), "ztunnel exited at once, without draining");
    // Draining: a new connection from the pod is not served (refused, or its SYN dropped,
    // depending on the capture), however long it waits.
    let fresh = m
        .lab
        .connect("client-a", server, Duration::from_secs(1))
        .map_err(|e| e.to_string())
        .and_then(|mut s| {
            s.write_all(b"x").map_err(|e| e.to_string())?;
            let mut one = [0u8; 1];
            match s.read(&mut one) {
                Ok(0) => Err("closed".to_string()),
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        });
    let still_sending = !sender.is_finished();

    let sent = sender.join().unwrap();
    let received = receiver.join().unwrap();
    wait_for("ztunnel to exit once drained", LIMIT, || exited(pid));
    restart_ztunnel(&mut m, "node1");

    let (sent, answer) = sent.unwrap_or_else(|e| panic!("{e} (server: {received:?})"));
    assert!(
        still_sending,
        "the transfer was over before the test looked"
    );
    assert_eq!(sent, (CHUNKS * CHUNK) as u64);
    match received {
        End::Clean(n) => assert_eq!(n, sent, "the server got {n} of {sent} bytes"),
        End::Error(n, e) => panic!("the server's read failed after {n} bytes: {e}"),
    }
    assert_eq!(answer, sent.to_string(), "the count came back wrong");
    assert!(
        fresh.is_err(),
        "a new connection was served while ztunnel drained"
    );
}

#[test]
fn a_pod_deleted_mid_transfer_lets_the_transfer_finish_before_del_answers() {
    let m = MeshLab::up("l4", 2);
    let listener = listen_in(&m, "server-1");
    let server = addr(m.ip("server-1"), PORT);
    // client-b (node2) uploads to server-1 (node1) for about 2.5 s, then half-closes and
    // waits for the count of what arrived.
    const CHUNKS: usize = 250;
    let pace = Duration::from_millis(10);
    let client = m
        .lab
        .connect("client-b", server, LIMIT)
        .expect("connect from client-b");
    let sender = upload_then_read_count(client, CHUNKS, pace);
    let receiver = thread::spawn(move || {
        let mut s = accept_one(&listener);
        let end = read_all(&mut s, None);
        if let End::Clean(n) = &end {
            let _ = s.write_all(n.to_string().as_bytes());
        }
        drop(s);
        (end, Instant::now())
    });
    thread::sleep(Duration::from_millis(800));
    // The runtime tears server-1's network down (amesh-cni first) while the upload runs; the
    // app itself keeps running, as it does until the kubelet's grace period ends.
    let info = m.lab.pod("server-1").unwrap().clone();
    let node = m.node(&info.node);
    let started = Instant::now();
    lab::runtime::for_node(m.lab.state(), &node)
        .unwrap()
        .del(&lab::runtime::sandbox_of(&info))
        .expect("CNI DEL");
    let del_took = started.elapsed();
    let del_answered = Instant::now();

    let sent = sender.join().unwrap();
    let (received, server_done) = receiver.join().unwrap();
    let (sent, answer) = sent.unwrap_or_else(|e| panic!("{e} (server: {received:?})"));
    assert_eq!(sent, (CHUNKS * CHUNK) as u64);
    match received {
        End::Clean(n) => assert_eq!(n, sent, "the server got {n} of {sent} bytes"),
        End::Error(n, e) => panic!("the server's read failed after {n} bytes: {e}"),
    }
    assert_eq!(answer, sent.to_string(), "the count came back wrong");
    // DEL waited for the drain, and answered well within the plugin's 10 s.
    assert!(
        server_done <= del_answered,
        "DEL answered ({del_took:?}) before the pod's transfer ended"
    );
    assert!(del_took < Duration::from_secs(9), "DEL took {del_took:?}");
}

/// Uploads `chunks` chunks at `pace` on its own thread, half-closes, then reads the server's
/// count of what arrived; the bytes sent and that answer, or why the upload failed.
fn upload_then_read_count(
    mut client: TcpStream,
    chunks: usize,
    pace: Duration,
) -> thread::JoinHandle<Result<(u64, String), String>> {
    thread::spawn(move || {
        let (sent, error) = write_all(&mut client, chunks, pace);
        if let Some(e) = error {
            return Err(format!("the upload failed after {sent} bytes: {e}"));
        }
        client.shutdown(Shutdown::Write).unwrap();
        client.set_read_timeout(Some(LIMIT)).unwrap();
        let mut answer = String::new();
        client
            .read_to_string(&mut answer)
            .map_err(|e| format!("reading the server's count: {e}"))?;
        Ok((sent, answer))
    })
}

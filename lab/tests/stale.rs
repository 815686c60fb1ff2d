//! Labs that outlive their creator (root needed): a detached lab made by the CLI, removed by
//! `amesh-lab down`; crashed labs and orphan namespaces, removed by `cleanup_stale`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use lab::{process, rundir, LabId, LabState};
use parking_lot::Mutex;

/// These tests create leftovers on purpose; one at a time, so that one test's
/// `cleanup_stale` does not reap another's leftovers before it looks.
static SERIAL: Mutex<()> = Mutex::new(());

fn cli_up(id: &LabId, dir: &tempfile::TempDir) -> LabState {
    let path = dir.path().to_str().unwrap();
    let out = cli(
        &["up", path, "--nodes", "2", "--id", id.as_str(), "--no-mesh"],
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("running (detached)") && text.contains("client"),
        "{text}"
    );
    LabState::load(id).unwrap()
}

#[test]
fn detached_lab_lives_on_and_cli_down_removes_it() {
    let _serial = SERIAL.lock();
    let id = LabId::new("tdetach").unwrap();
    let _guard = DownOnDrop(id.clone());
    let dir = manifests(MANIFESTS);
    let state = cli_up(&id, &dir);
    // The CLI process is gone; the lab is alive (its keeper holds the lock) and works.
    assert!(rundir::is_alive(&id));
    assert!(lab::cleanup_stale().unwrap().iter().all(|r| r != &id));
    let client = state.pod("client").unwrap();
    let web = &state.pods_of("shop", "web-")[0];
    let back = lab::client::tcp_echo_from(
        &client.netns,
        std::net::SocketAddr::from((web.ip, 8080)),
        b"still here",
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(back, b"still here");

    let out = cli(&["down", "--id", id.as_str()], Duration::from_secs(30));
    assert!(
        out.status.success(),
        "down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pids: Vec<i32> = state.processes.iter().map(|p| p.pid).collect();
    assert_eq!(
        pids.len(),
        6,
        "4 echo apps (kube-system's too), the cluster DNS and the keeper"
    );
    assert_gone(&id, &pids);
}

#[test]
fn crashed_lab_is_reaped_by_cleanup_stale() {
    let _serial = SERIAL.lock();
    let id = LabId::new("tcrash").unwrap();
    let _guard = DownOnDrop(id.clone());
    let dir = manifests(MANIFESTS);
    let state = cli_up(&id, &dir);
    // Crash: every process of the lab dies at once, the namespaces stay.
    for p in &state.processes {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = std::time::Instant::now() + TIMEOUT;
    while state.processes.iter().any(process::is_alive) {
        assert!(
            std::time::Instant::now() < deadline,
            "processes did not die"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!netns_of(&id).is_empty());
    assert!(!rundir::is_alive(&id));

    let reaped = lab::cleanup_stale().unwrap();
    assert!(reaped.contains(&id), "reaped {reaped:?}");
    assert_gone(&id, &[]);
}

#[test]
fn orphan_namespaces_and_their_processes_are_reaped() {
    let _serial = SERIAL.lock();
    let id = LabId::new("torphan").unwrap();
    let _guard = DownOnDrop(id.clone());
    // A netns of a lab that has no run directory, with a process still living in it.
    let ns = id.node_netns("node1");
    lab::netns::add(&ns).unwrap();
    let log = std::env::temp_dir().join("amesh-lab-orphan-test.log");
    let mut cmd = Command::new("sleep");
    cmd.arg("60");
    let (mut child, record) = process::spawn_in_netns("sleeper", &ns, cmd, &log, None).unwrap();
    assert_eq!(lab::netns::pids(&ns), vec![record.pid]);

    let reaped = lab::cleanup_stale().unwrap();
    assert!(reaped.contains(&id), "reaped {reaped:?}");
    // Killed by the reaper: wait() returns at once.
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert_gone(&id, &[record.pid]);
    let _ = std::fs::remove_file(log);
}

#[test]
fn a_live_lab_of_this_process_is_never_reaped() {
    let _serial = SERIAL.lock();
    let dir = manifests(MANIFESTS);
    let lab = lab::Lab::up(dir.path(), 1, options()).unwrap();
    let reaped = lab::cleanup_stale().unwrap();
    assert!(!reaped.contains(lab.id()));
    assert!(!netns_of(lab.id()).is_empty());
    lab.down().unwrap();
}

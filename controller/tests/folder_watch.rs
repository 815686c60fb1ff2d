//! The folder source watches its folder instead of re-reading it: a change applies quickly, an
//! idle folder is never read again (its files are read only by a reload, counted in
//! `FolderStats::loads`), and the stat-only re-check finds what the watcher misses, including
//! a Kubernetes ConfigMap volume's `..data` symlink swap.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use controller::manifests::Manifests;
use controller::source::folder::FolderSource;
use tokio::sync::watch;

const SETTLE: Duration = Duration::from_millis(20);
/// Longer than any test: only the watcher can report a change.
const NEVER: Duration = Duration::from_secs(3600);

fn peer_auth(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {{name: default, namespace: mesh}}\nspec:\n  mtls: {{mode: {mode}}}\n"
    )
}

/// The mode of `mesh/default`, as the source last published it.
fn mode(rx: &watch::Receiver<Arc<Manifests>>) -> Option<String> {
    let m = rx.borrow();
    let pa = m.peer_authentications.values().next()?;
    Some(format!("{:?}", pa.spec.mtls.as_ref()?.mode.as_ref()?))
}

/// Waits (at most 10 s) until the published mode is `want`.
async fn until_mode(rx: &mut watch::Receiver<Arc<Manifests>>, want: &str) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while mode(rx).as_deref() != Some(want) {
            rx.changed().await.expect("source alive");
        }
    })
    .await;
    assert!(waited.is_ok(), "mode still {:?}, want {want}", mode(rx));
}

/// Waits (at most 10 s) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

#[tokio::test]
async fn a_change_is_picked_up_by_the_watcher() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("pa.yaml"), peer_auth("STRICT")).unwrap();
    let source = FolderSource::new(dir.path(), SETTLE).with_recheck(NEVER);
    let stats = source.stats();
    let (mut rx, _task) = source.start();
    assert!(stats.watching());
    assert_eq!(mode(&rx).as_deref(), Some("Strict"));
    fs::write(dir.path().join("pa.yaml"), peer_auth("PERMISSIVE")).unwrap();
    until_mode(&mut rx, "Permissive").await;
    // A new file in a new subfolder is seen too (the watch is recursive).
    fs::remove_file(dir.path().join("pa.yaml")).unwrap();
    fs::create_dir(dir.path().join("sub")).unwrap();
    fs::write(dir.path().join("sub/pa.yaml"), peer_auth("DISABLE")).unwrap();
    until_mode(&mut rx, "Disable").await;
    assert_eq!(
        stats.rechecks(),
        0,
        "the watcher alone reported the changes"
    );
}

#[tokio::test]
async fn an_idle_large_folder_is_not_read_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 200 files of ~10 KiB: a Service each, padded with annotations.
    let padding = "x".repeat(10 * 1024);
    for i in 0..200 {
        let text = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: mesh\n  \
             annotations: {{pad: {padding}}}\nspec:\n  ports: [{{port: 80}}]\n"
        );
        fs::write(dir.path().join(format!("svc-{i}.yaml")), text).unwrap();
    }
    fs::write(dir.path().join("pa.yaml"), peer_auth("STRICT")).unwrap();
    let source = FolderSource::new(dir.path(), SETTLE).with_recheck(Duration::from_millis(20));
    let stats = source.stats();
    let (mut rx, _task) = source.start();
    assert_eq!(rx.borrow().services.len(), 200);
    assert_eq!(stats.loads(), 1);
    // Someone else reading every file (as a backup would) is not a change either.
    for entry in fs::read_dir(dir.path()).unwrap() {
        fs::read(entry.unwrap().path()).unwrap();
    }
    // Many stat-only checks and the events of the source's own reads later: still one read.
    let checks = stats.rechecks();
    until("ten stat-only checks", || stats.rechecks() >= checks + 10).await;
    assert_eq!(stats.loads(), 1, "an idle folder was read again");
    // A change is still a change.
    fs::write(dir.path().join("pa.yaml"), peer_auth("PERMISSIVE")).unwrap();
    until_mode(&mut rx, "Permissive").await;
    assert_eq!(rx.borrow().services.len(), 200);
    // The write's last events (a slow machine may see them after a first reload) settle.
    let checks = stats.rechecks();
    until("ten checks after the edit", || {
        stats.rechecks() >= checks + 10
    })
    .await;
    let after = stats.loads();
    assert!(after >= 2, "{after}");
    let checks = stats.rechecks();
    until("ten more checks", || stats.rechecks() >= checks + 10).await;
    assert_eq!(stats.loads(), after, "the folder was read again while idle");
}

#[tokio::test]
async fn without_events_the_stat_check_finds_a_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("pa.yaml"), peer_auth("STRICT")).unwrap();
    let source = FolderSource::new(dir.path(), SETTLE)
        .without_watcher()
        .with_recheck(Duration::from_millis(50));
    let stats = source.stats();
    let (mut rx, _task) = source.start();
    assert!(!stats.watching());
    fs::write(dir.path().join("pa.yaml"), peer_auth("PERMISSIVE")).unwrap();
    until_mode(&mut rx, "Permissive").await;
    assert!(stats.rechecks() >= 1);
    // Same size, new content: the mtime (or the ctime) tells.
    fs::write(dir.path().join("pa.yaml"), peer_auth("DISABLE   ")).unwrap();
    until_mode(&mut rx, "Disable").await;
}

/// Lays out a ConfigMap volume as the kubelet does: `..<stamp>/` holds the files, `..data`
/// links to it, and each visible file links into `..data`.
fn configmap_version(dir: &Path, stamp: &str, text: &str) {
    let version = dir.join(stamp);
    fs::create_dir(&version).unwrap();
    fs::write(version.join("pa.yaml"), text).unwrap();
}

#[tokio::test]
async fn a_configmap_data_swap_is_picked_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    configmap_version(d, "..2026_12_06_01", &peer_auth("STRICT"));
    symlink("..2026_12_06_01", d.join("..data")).unwrap();
    symlink("..data/pa.yaml", d.join("pa.yaml")).unwrap();
    let source = FolderSource::new(d, SETTLE).with_recheck(NEVER);
    let stats = source.stats();
    let (mut rx, _task) = source.start();
    assert_eq!(mode(&rx).as_deref(), Some("Strict"));
    // The kubelet's atomic update: a new version, a new link renamed over `..data`, the old
    // version removed. No visible file is written.
    configmap_version(d, "..2026_12_06_02", &peer_auth("PERMISSIVE"));
    symlink("..2026_12_06_02", d.join("..data_tmp")).unwrap();
    fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    fs::remove_dir_all(d.join("..2026_12_06_01")).unwrap();
    until_mode(&mut rx, "Permissive").await;
    assert_eq!(stats.rechecks(), 0, "the watcher reported the swap");
}

#[tokio::test]
async fn a_configmap_swap_without_events_is_found_by_the_stat_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // Same size in both versions: only the inode behind the link tells them apart.
    configmap_version(d, "..v1", &peer_auth("STRICT    "));
    symlink("..v1", d.join("..data")).unwrap();
    symlink("..data/pa.yaml", d.join("pa.yaml")).unwrap();
    let source = FolderSource::new(d, SETTLE)
        .without_watcher()
        .with_recheck(Duration::from_millis(50));
    let (mut rx, _task) = source.start();
    assert_eq!(mode(&rx).as_deref(), Some("Strict"));
    configmap_version(d, "..v2", &peer_auth("PERMISSIVE"));
    symlink("..v2", d.join("..data_tmp")).unwrap();
    fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    until_mode(&mut rx, "Permissive").await;
}

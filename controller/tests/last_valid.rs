//! The folder source keeps the last valid version of what a file held when an edit makes the
//! file invalid: an invalid edit of a policy in force must never take it out of force (a DENY
//! would stop denying; an ALLOW's workload would be open to everyone).

use std::fs;
use std::path::Path;
use std::time::Duration;

use controller::manifests::{LastValid, ManifestError, Manifests, ObjectKey};
use controller::source::folder::FolderSource;

fn write(dir: &Path, rel: &str, text: &str) {
    fs::write(dir.join(rel), text).expect("write");
}

const DENY: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-b, namespace: mesh}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/mesh/sa/client-b]}}]
";

const ALLOW: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-a, namespace: mesh}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/mesh/sa/client-a]}}]
";

const STRICT: &str = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: mesh}
spec:
  mtls: {mode: STRICT}
";

/// Ways an edit breaks a policy, as an attacker's run tried them: (how, text to replace, the
/// broken text). Each applies to the policies that contain the text.
const BREAKAGES: &[(&str, &str, &str)] = &[
    ("misspelt action", "action: DENY", "action: DENYY"),
    ("misspelt action", "action: ALLOW", "action: ALLOWW"),
    ("misspelt mode", "mode: STRICT", "mode: STRICTT"),
    (
        "principals of the wrong type",
        "principals: [cluster.local/ns/mesh/sa/client-b]",
        "principals: 42",
    ),
    (
        "principals of the wrong type",
        "principals: [cluster.local/ns/mesh/sa/client-a]",
        "principals: 42",
    ),
    ("mtls of the wrong type", "mtls: {mode: STRICT}", "mtls: 42"),
    ("broken YAML", "rules:\n", "rules: [{\n"),
    ("broken YAML", "mtls: {mode: STRICT}", "mtls: {mode: STRICT"),
    ("unknown field", "spec:\n", "spec:\n  actoin: DENY\n"),
    (
        "misspelt kind",
        "kind: AuthorizationPolicy",
        "kind: AuthorizationPolicyy",
    ),
    (
        "misspelt kind",
        "kind: PeerAuthentication",
        "kind: PeerAuthenticatoin",
    ),
];

fn breakages(valid: &str) -> Vec<(&'static str, String)> {
    BREAKAGES
        .iter()
        .filter(|(_, from, _)| valid.contains(from))
        .map(|(how, from, to)| (*how, valid.replacen(from, to, 1)))
        .collect()
}

fn deny_action(m: &Manifests) -> Option<String> {
    m.authorization_policies
        .get(&ObjectKey::new("mesh", "deny-b"))
        .and_then(|p| p.spec.action.as_ref())
        .map(|a| format!("{a:?}"))
}

#[test]
fn every_invalid_edit_keeps_the_last_valid_version_in_force() {
    for (valid, file, key) in [
        (DENY, "deny.yaml", "AuthorizationPolicy mesh/deny-b"),
        (ALLOW, "allow.yaml", "AuthorizationPolicy mesh/allow-a"),
        (STRICT, "strict.yaml", "PeerAuthentication mesh/strict"),
    ] {
        let cases = breakages(valid);
        assert!(
            cases.len() >= 5,
            "{file}: only {} breakages apply",
            cases.len()
        );
        for (how, broken) in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            write(dir.path(), file, valid);
            let mut history = LastValid::default();
            let first = history.load_dir(dir.path());
            assert!(first.errors.is_empty(), "{:#?}", first.errors);
            let before = format!("{:?}", first.manifests);

            write(dir.path(), file, &broken);
            let after = history.load_dir(dir.path());
            assert!(
                !after.errors.is_empty(),
                "{how} in {file} was not rejected:\n{broken}"
            );
            assert_eq!(
                format!("{:?}", after.manifests),
                before,
                "{how} in {file} changed what is in force"
            );
            assert_eq!(after.kept.len(), 1, "{how}: {:?}", after.kept);
            assert_eq!(after.kept[0].object, key);
            assert!(after.kept[0].file.ends_with(file));
            // Still broken on the next poll: still kept.
            let again = history.load_dir(dir.path());
            assert_eq!(
                format!("{:?}", again.manifests),
                before,
                "{how}, second poll"
            );
        }
    }
}

#[test]
fn a_valid_edit_applies_and_a_deleted_file_removes_its_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut history = LastValid::default();
    write(dir.path(), "deny.yaml", DENY);
    assert_eq!(
        deny_action(&history.load_dir(dir.path()).manifests).as_deref(),
        Some("Deny")
    );
    write(
        dir.path(),
        "deny.yaml",
        &DENY.replace("action: DENY", "action: DENYY"),
    );
    assert_eq!(
        deny_action(&history.load_dir(dir.path()).manifests).as_deref(),
        Some("Deny")
    );
    // Fixed into something else that is valid: that applies.
    write(
        dir.path(),
        "deny.yaml",
        &DENY.replace("action: DENY", "action: AUDIT"),
    );
    let fixed = history.load_dir(dir.path());
    assert!(fixed.errors.is_empty(), "{:#?}", fixed.errors);
    assert!(fixed.kept.is_empty());
    assert_eq!(deny_action(&fixed.manifests).as_deref(), Some("Audit"));
    // Deleting the file is a deliberate removal.
    fs::remove_file(dir.path().join("deny.yaml")).unwrap();
    let gone = history.load_dir(dir.path());
    assert_eq!(deny_action(&gone.manifests), None);
    assert!(gone.kept.is_empty());
}

#[test]
fn other_objects_of_a_broken_file_stay_and_new_invalid_objects_do_not_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut history = LastValid::default();
    write(dir.path(), "both.yaml", &format!("{DENY}---\n{ALLOW}"));
    let first = history.load_dir(dir.path());
    assert_eq!(first.manifests.authorization_policies.len(), 2);
    // The first document's edit breaks the YAML so badly that its name cannot be read: the
    // file's other object loads, and the one that went missing is kept.
    write(
        dir.path(),
        "both.yaml",
        &format!("{}---\n{ALLOW}", DENY.replace("metadata:", "metadata: [")),
    );
    let broken = history.load_dir(dir.path());
    assert_eq!(broken.manifests.authorization_policies.len(), 2);
    assert_eq!(
        broken
            .kept
            .iter()
            .map(|k| k.object.as_str())
            .collect::<Vec<_>>(),
        ["AuthorizationPolicy mesh/deny-b"]
    );
    // An object that never was valid has nothing to keep.
    write(
        dir.path(),
        "new.yaml",
        &ALLOW
            .replace("allow-a", "allow-new")
            .replace("action: ALLOW", "action: NOPE"),
    );
    let new = history.load_dir(dir.path());
    assert!(!new
        .manifests
        .authorization_policies
        .contains_key(&ObjectKey::new("mesh", "allow-new")));
    assert!(new
        .errors
        .iter()
        .any(|e| matches!(e, ManifestError::Invalid { file, .. } if file.ends_with("new.yaml"))));
}

#[test]
fn an_unreadable_file_keeps_everything_it_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut history = LastValid::default();
    write(dir.path(), "deny.yaml", DENY);
    history.load_dir(dir.path());
    // Not UTF-8: the file cannot be read as text at all.
    fs::write(dir.path().join("deny.yaml"), [0xff, 0xfe, 0x00, 0x80]).unwrap();
    let now = history.load_dir(dir.path());
    assert!(
        matches!(now.errors.as_slice(), [ManifestError::Read { .. }]),
        "{:#?}",
        now.errors
    );
    assert_eq!(deny_action(&now.manifests).as_deref(), Some("Deny"));
}

#[tokio::test]
async fn the_watched_folder_keeps_a_policy_through_an_invalid_edit() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "deny.yaml", DENY);
    let (mut rx, _task) = FolderSource::new(dir.path(), Duration::from_millis(50)).start();
    assert_eq!(deny_action(&rx.borrow()).as_deref(), Some("Deny"));
    write(
        dir.path(),
        "deny.yaml",
        &DENY.replace("action: DENY", "action: DENYY"),
    );
    // A reload happens (the folder changed); what it publishes still holds the DENY.
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("the folder source reloads within 5 s")
        .expect("source alive");
    assert_eq!(deny_action(&rx.borrow()).as_deref(), Some("Deny"));
    // And a valid edit goes through.
    write(
        dir.path(),
        "deny.yaml",
        &DENY.replace("action: DENY", "action: AUDIT"),
    );
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("reload")
        .expect("source alive");
    assert_eq!(deny_action(&rx.borrow()).as_deref(), Some("Audit"));
}

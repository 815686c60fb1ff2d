//! Unit tests of `pod.rs`: workload names and canonical labels.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::*;

fn meta(labels: &[(&str, &str)], owner: Option<(&str, &str)>) -> ObjectMeta {
    ObjectMeta {
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        owner_references: owner.map(|(kind, name)| {
            vec![OwnerReference {
                kind: kind.into(),
                name: name.into(),
                controller: Some(true),
                ..Default::default()
            }]
        }),
        ..Default::default()
    }
}

#[test]
fn deployment_from_replica_set() {
    let m = meta(
        &[("pod-template-hash", "7d9f")],
        Some(("ReplicaSet", "web-v1-7d9f")),
    );
    assert_eq!(
        workload_name_and_type("web-v1-7d9f-abcde", &m),
        ("web-v1".into(), WorkloadType::Deployment)
    );
    let m = meta(&[], Some(("ReplicaSet", "web-v1-7d9f")));
    assert_eq!(
        workload_name_and_type("web-v1-7d9f-abcde", &m),
        ("web-v1-7d9f".into(), WorkloadType::Pod)
    );
}

#[test]
fn deployment_from_name_and_hash() {
    let m = meta(&[("pod-template-hash", "5f6b")], None);
    assert_eq!(
        workload_name_and_type("api-5f6b-x1", &m),
        ("api".into(), WorkloadType::Deployment)
    );
    assert_eq!(
        workload_name_and_type("other", &m),
        ("other".into(), WorkloadType::Pod)
    );
}

#[test]
fn jobs_and_cron_jobs() {
    let m = meta(&[], Some(("Job", "backup-28000000")));
    assert_eq!(
        workload_name_and_type("backup-28000000-x", &m),
        ("backup".into(), WorkloadType::Cronjob)
    );
    let m = meta(&[], Some(("Job", "migrate")));
    assert_eq!(
        workload_name_and_type("migrate-x", &m),
        ("migrate".into(), WorkloadType::Job)
    );
    let m = meta(&[], Some(("StatefulSet", "db")));
    assert_eq!(
        workload_name_and_type("db-0", &m),
        ("db".into(), WorkloadType::Pod)
    );
}

#[test]
fn canonical_label_precedence() {
    let l = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        canonical_names(&l(&[("app", "a"), ("app.kubernetes.io/name", "b")]), "w"),
        ("b".into(), "latest".into())
    );
    assert_eq!(
        canonical_names(&l(&[("version", "v2"), (labels::CANONICAL_NAME, "c")]), "w"),
        ("c".into(), "v2".into())
    );
    assert_eq!(canonical_names(&l(&[]), "w"), ("w".into(), "latest".into()));
}

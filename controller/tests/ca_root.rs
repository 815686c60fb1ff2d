//! The CA root on the Kubernetes API, through kube-rs against the fake API server (real JSON
//! over HTTP): the root kept in the Secret `istio-system/istio-ca-secret` (created when absent,
//! reused on restart, the winner's after a lost create race, a malformed one refused without
//! any write) and published as the ConfigMap `istio-ca-root-cert` (created, updated when stale,
//! left alone when equal, following root changes and repaired after a deletion).

#[path = "kube_source/fake_api.rs"]
mod fake_api;

use std::collections::BTreeMap;
use std::time::Duration;

use controller::ca::root_configmap::{self, Published, ROOT_CONFIGMAP};
use controller::ca::root_secret::{self, Bootstrap, CaSecretError, ObjectName};
use controller::ca::RootPublisher;
use fake_api::{FakeApi, DEADLINE};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use mesh::certs::{generate_root, CaPem, LocalCa};
use mesh::Identity;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{json, Value};

const TD: &str = "cluster.local";
const NS: &str = "istio-system";
const SECRET: &str = "istio-ca-secret";
const SECRET_PATH: &str = "/api/v1/namespaces/istio-system/secrets/istio-ca-secret";

fn default_secret() -> ObjectName {
    root_secret::DEFAULT_CA_SECRET.parse().unwrap()
}

/// The stored Secret, decoded.
fn stored_secret(api: &FakeApi, namespace: &str, name: &str) -> Secret {
    let value = api
        .objects
        .get("secrets", namespace, name)
        .expect("the Secret is stored");
    serde_json::from_value(value).unwrap()
}

fn secret_text(secret: &Secret, key: &str) -> String {
    let data = secret.data.as_ref().expect("the Secret has data");
    String::from_utf8(data[key].0.clone()).unwrap()
}

/// A Secret object as `kubectl apply` would store it, with `data` as given.
fn secret_object(data: &[(&str, &str)]) -> Value {
    let data: BTreeMap<String, ByteString> = data
        .iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
    let mut secret = Secret {
        data: Some(data),
        type_: Some(root_secret::CA_SECRET_TYPE.into()),
        ..Secret::default()
    };
    secret.metadata.name = Some(SECRET.into());
    serde_json::to_value(secret).unwrap()
}

fn full_secret(pem: &CaPem) -> Value {
    let root = pem.root_cert.clone().unwrap();
    secret_object(&[
        ("ca-cert.pem", &pem.ca_cert),
        ("ca-key.pem", &pem.ca_key),
        ("cert-chain.pem", ""),
        ("root-cert.pem", &root),
    ])
}

fn root_configmap(api: &FakeApi, namespace: &str) -> Option<ConfigMap> {
    let value = api.objects.get("configmaps", namespace, ROOT_CONFIGMAP)?;
    Some(serde_json::from_value(value).unwrap())
}

fn published_root(api: &FakeApi) -> Option<String> {
    root_configmap(api, NS)?.data?.get("root-cert.pem").cloned()
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// Whether a workload certificate `ca` issues verifies up to `root_pem` alone.
fn issues_under(ca: &LocalCa, root_pem: &str) -> bool {
    let web = Identity::new(TD, "shop", "web").unwrap();
    let (chain, _key) = ca.issue_pem(&web, Duration::from_secs(3600)).unwrap();
    let root = der(root_pem);
    let anchor = webpki::anchor_from_trusted_cert(&root).unwrap();
    let leaf = der(&chain[0]);
    let leaf = webpki::EndEntityCert::try_from(&leaf).unwrap();
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .is_ok()
}

#[tokio::test]
async fn no_secret_creates_one_and_the_configmap_holds_its_root() {
    let api = fake_api::serve().await;
    let (ca, how) = root_secret::load_or_create(api.client(), &default_secret(), TD)
        .await
        .unwrap();
    assert_eq!(how, Bootstrap::Created);
    assert_eq!(
        api.objects.writes(),
        ["POST /api/v1/namespaces/istio-system/secrets"]
    );

    let secret = stored_secret(&api, NS, SECRET);
    assert_eq!(secret.type_.as_deref(), Some("istio.io/ca-root"));
    let keys: Vec<&str> = secret
        .data
        .as_ref()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem"
        ]
    );
    assert_eq!(secret_text(&secret, "cert-chain.pem"), "");
    let root = secret_text(&secret, "root-cert.pem");
    assert_eq!(root, ca.root_pem());
    assert_eq!(
        secret_text(&secret, "ca-cert.pem"),
        root,
        "a self-signed root"
    );
    let root_der = der(&root);
    let (_, parsed) = x509_parser::parse_x509_certificate(&root_der).unwrap();
    assert!(parsed.is_ca(), "the root is a CA certificate");
    assert_eq!(parsed.subject(), parsed.issuer(), "self-signed");
    assert!(
        issues_under(&ca, &root),
        "the CA signs under the stored root"
    );

    let done = root_configmap::publish(api.client(), NS, &ca.root_pem())
        .await
        .unwrap();
    assert_eq!(done, Published::Created);
    assert_eq!(published_root(&api).as_deref(), Some(root.as_str()));
    let labels = root_configmap(&api, NS).unwrap().metadata.labels.unwrap();
    assert_eq!(labels["istio.io/config"], "true");
}

#[tokio::test]
async fn restart_uses_the_existing_secret() {
    let api = fake_api::serve().await;
    let (first, how) = root_secret::load_or_create(api.client(), &default_secret(), TD)
        .await
        .unwrap();
    assert_eq!(how, Bootstrap::Created);
    let before = api.objects.get("secrets", NS, SECRET).unwrap();
    let writes = api.objects.writes().len();

    // A second start against the same API server.
    let (second, how) = root_secret::load_or_create(api.client(), &default_secret(), TD)
        .await
        .unwrap();
    assert_eq!(how, Bootstrap::Loaded);
    assert_eq!(second.root_pem(), first.root_pem());
    assert_eq!(
        api.objects.writes().len(),
        writes,
        "nothing written on restart"
    );
    assert_eq!(api.objects.get("secrets", NS, SECRET).unwrap(), before);
    assert_eq!(
        api.objects.requests().last().unwrap(),
        &format!("GET {SECRET_PATH}")
    );
    // Same key too: what the restarted CA signs verifies under the first root.
    assert!(issues_under(&second, &first.root_pem()));
}

#[tokio::test]
async fn a_lost_create_race_uses_the_winners_root() {
    let api = fake_api::serve().await;
    let winner = generate_root(TD).unwrap();
    api.objects
        .insert_before_create("secrets", NS, SECRET, full_secret(&winner));

    let (ca, how) = root_secret::load_or_create(api.client(), &default_secret(), TD)
        .await
        .unwrap();
    assert_eq!(how, Bootstrap::LostRace);
    let winner_root = winner.root_cert.clone().unwrap();
    assert_eq!(ca.root_pem(), winner_root);
    assert!(
        issues_under(&ca, &winner_root),
        "signs with the winner's key"
    );
    assert_eq!(
        api.objects.requests(),
        [
            format!("GET {SECRET_PATH}"),
            "POST /api/v1/namespaces/istio-system/secrets".to_owned(),
            format!("GET {SECRET_PATH}"),
        ]
    );
    let stored = stored_secret(&api, NS, SECRET);
    assert_eq!(
        secret_text(&stored, "ca-key.pem"),
        winner.ca_key,
        "the winner's Secret is kept"
    );
}

#[tokio::test]
async fn a_malformed_secret_is_refused_naming_the_secret_and_key_and_never_written() {
    let good = generate_root(TD).unwrap();
    let other = generate_root(TD).unwrap();
    let root = good.root_cert.clone().unwrap();
    // (case, the Secret's data, the key at fault)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 4] = [
        (
            "missing key",
            vec![("ca-cert.pem", &good.ca_cert), ("root-cert.pem", &root)],
            "ca-key.pem",
        ),
        (
            "bad PEM",
            vec![
                ("ca-cert.pem", &good.ca_cert),
                ("ca-key.pem", &good.ca_key),
                (
                    "root-cert.pem",
                    "-----BEGIN CERTIFICATE-----\nnot base64!\n",
                ),
            ],
            "root-cert.pem",
        ),
        (
            "key of another CA",
            vec![
                ("ca-cert.pem", &good.ca_cert),
                ("ca-key.pem", &other.ca_key),
                ("root-cert.pem", &root),
            ],
            "ca-key.pem",
        ),
        (
            "not a certificate",
            vec![
                ("ca-cert.pem", "hello"),
                ("ca-key.pem", &good.ca_key),
                ("root-cert.pem", &root),
            ],
            "ca-cert.pem",
        ),
    ];
    // Also under a name of the operator's choosing (`--ca-secret`).
    let names = [default_secret(), "mesh-ca/root".parse().unwrap()];
    for ((case, data, bad_key), name) in cases.into_iter().zip(names.iter().cycle()) {
        let api = fake_api::serve().await;
        let mut object = secret_object(&data);
        object["metadata"]["name"] = name.name.clone().into();
        api.objects
            .insert("secrets", &name.namespace, &name.name, object);
        let before = api.objects.get("secrets", &name.namespace, &name.name);

        let err = root_secret::load_or_create(api.client(), name, TD)
            .await
            .expect_err(case);
        let message = err.to_string();
        assert!(
            matches!(&err, CaSecretError::Malformed { key, .. } if *key == bad_key),
            "{case}: {err:?}"
        );
        assert!(message.contains(&name.to_string()), "{case}: {message}");
        assert!(message.contains(bad_key), "{case}: {message}");
        assert!(
            api.objects.writes().is_empty(),
            "{case}: {:?}",
            api.objects.writes()
        );
        assert_eq!(
            api.objects.get("secrets", &name.namespace, &name.name),
            before
        );
    }
}

#[tokio::test]
async fn a_stale_configmap_is_updated_and_an_equal_one_left_alone() {
    let api = fake_api::serve().await;
    let old = generate_root(TD).unwrap().root_cert.unwrap();
    let new = generate_root(TD).unwrap().root_cert.unwrap();
    api.objects.insert(
        "configmaps",
        NS,
        ROOT_CONFIGMAP,
        json!({"metadata": {"name": ROOT_CONFIGMAP}, "data": {"root-cert.pem": old}}),
    );

    let done = root_configmap::publish(api.client(), NS, &new)
        .await
        .unwrap();
    assert_eq!(done, Published::Updated);
    assert_eq!(published_root(&api), Some(new.clone()));
    let put = format!("PUT /api/v1/namespaces/{NS}/configmaps/{ROOT_CONFIGMAP}");
    assert_eq!(api.objects.writes(), [put.as_str()]);
    let version = root_configmap(&api, NS).unwrap().metadata.resource_version;

    let done = root_configmap::publish(api.client(), NS, &new)
        .await
        .unwrap();
    assert_eq!(done, Published::Unchanged);
    assert_eq!(
        api.objects.writes(),
        [put],
        "an equal root is not rewritten"
    );
    assert_eq!(
        root_configmap(&api, NS).unwrap().metadata.resource_version,
        version
    );
}

#[tokio::test]
async fn the_publisher_follows_root_changes_and_repairs_a_deleted_configmap() {
    let api = fake_api::serve().await;
    let first = generate_root(TD).unwrap().root_cert.unwrap();
    let second = generate_root(TD).unwrap().root_cert.unwrap();
    let (root_tx, root_rx) = tokio::sync::watch::channel(first.clone());
    let task = RootPublisher::new(api.client(), NS)
        .resync(Duration::from_millis(100))
        .spawn(root_rx);

    let until = |want: Option<String>| {
        let api = &api;
        async move {
            tokio::time::timeout(DEADLINE, async {
                while published_root(api) != want {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("ConfigMap still holds {:?}", published_root(api)));
        }
    };
    until(Some(first.clone())).await;
    root_tx.send(second.clone()).unwrap();
    until(Some(second.clone())).await;
    api.objects.remove("configmaps", NS, ROOT_CONFIGMAP);
    until(Some(second)).await;

    drop(root_tx);
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the publisher stops with its root's sender")
        .unwrap();
}

//! Mutual TLS over real loopback sockets: good peers are accepted both ways, each kind of bad
//! certificate is refused with its own `TlsError` on the verifying side, and rotation applies to
//! new connections only.

mod common_certs;

use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common_certs::{dns, id, uri, Presented, RawLeaf, TestCa, HOUR};
use mesh::tls::{peer_identity, tls_error_of, TlsContext, TlsError};
use mesh::Identity;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

type Handshakes = (
    io::Result<client::TlsStream<TcpStream>>,
    io::Result<server::TlsStream<TcpStream>>,
);

/// One TCP connection on 127.0.0.1 and a TLS handshake on each end of it.
async fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Handshakes {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = async {
        let (tcp, _) = listener.accept().await.unwrap();
        TlsAcceptor::from(server).accept(tcp).await
    };
    let connect = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
        TlsConnector::from(client).connect(name, tcp).await
    };
    let timeout = Duration::from_secs(10);
    let (c, s) = tokio::time::timeout(timeout, async { tokio::join!(connect, accept) })
        .await
        .expect("handshake hung");
    (c, s)
}

fn client_id() -> Identity {
    id("default", "client")
}

fn server_id() -> Identity {
    id("default", "server")
}

/// The `TlsError` of a failed handshake, with a failure message naming the case.
fn refusal<'a, T>(case: &str, result: &'a io::Result<T>) -> &'a TlsError {
    let err = match result {
        Ok(_) => panic!("{case}: handshake succeeded, expected a refusal"),
        Err(e) => e,
    };
    tls_error_of(err).unwrap_or_else(|| panic!("{case}: not a TlsError: {err}"))
}

#[tokio::test]
async fn good_peers_are_accepted_both_ways() {
    let ca = TestCa::new();
    let client = ca.context(&[client_id()]);
    let server = ca.context(&[server_id()]);
    let (c, s) = handshake(
        client.client_config(&client_id(), &[server_id()]).unwrap(),
        server.server_config(&server_id()).unwrap(),
    )
    .await;
    let (mut c, mut s) = (c.unwrap(), s.unwrap());

    assert_eq!(peer_identity(c.get_ref().1), Some(server_id()));
    assert_eq!(peer_identity(s.get_ref().1), Some(client_id()));
    assert_eq!(c.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        c.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    c.write_all(b"ping").await.unwrap();
    c.flush().await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn any_of_several_expected_identities_is_accepted() {
    let ca = TestCa::new();
    let client = ca.context(&[client_id()]);
    let server = ca.context(&[server_id()]);
    let expected = [id("other", "x"), server_id()];
    let (c, s) = handshake(
        client.client_config(&client_id(), &expected).unwrap(),
        server.server_config(&server_id()).unwrap(),
    )
    .await;
    assert_eq!(peer_identity(c.unwrap().get_ref().1), Some(server_id()));
    s.unwrap();
}

/// The mesh seals TLS 1.3's AES-GCM records with `ring` (`mesh::tls::provider`): with each
/// AES-GCM suite, on either end, it talks to a peer on plain aws-lc-rs: 256 KiB each way,
/// across many records, arrive intact.
#[tokio::test]
async fn ring_records_interoperate_with_aws_lc_in_both_suites() {
    use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider};
    use rustls::crypto::CryptoProvider;

    let ca = TestCa::new();
    let mesh_side = ca.context(&[client_id(), server_id()]);
    let body: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 31 % 253) as u8).collect();
    for suite in [
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
    ] {
        // The plain aws-lc-rs peer offers this one suite only, so it is the one agreed.
        let only = Arc::new(CryptoProvider {
            cipher_suites: vec![suite],
            ..default_provider()
        });
        let peer = || Presented::from(ca.ca.issue(&client_id(), HOUR).unwrap());
        let pairs = [
            (
                "mesh server",
                peer().client_config_with(only.clone()),
                mesh_side.server_config(&server_id()).unwrap(),
            ),
            (
                "mesh client",
                mesh_side
                    .client_config(&client_id(), &[client_id()])
                    .unwrap(),
                peer().server_config_with(only.clone()),
            ),
        ];
        for (case, client, server) in pairs {
            let (c, s) = handshake(client, server).await;
            let (mut c, mut s) = (c.unwrap(), s.unwrap());
            let agreed = c.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
            assert_eq!(agreed, Some(suite.suite()), "{case}");
            let echo = async {
                let mut got = vec![0u8; body.len()];
                s.read_exact(&mut got).await.unwrap();
                s.write_all(&got).await.unwrap();
                s.flush().await.unwrap();
                got
            };
            let send = async {
                c.write_all(&body).await.unwrap();
                c.flush().await.unwrap();
                let mut back = vec![0u8; body.len()];
                c.read_exact(&mut back).await.unwrap();
                back
            };
            let (got, back) =
                tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(echo, send) })
                    .await
                    .expect("transfer hung");
            assert!(
                got == body,
                "{case} {:?}: server got other bytes",
                suite.suite()
            );
            assert!(
                back == body,
                "{case} {:?}: client got other bytes",
                suite.suite()
            );
        }
    }
}

/// A bad certificate, what the verifier must call it, and words its message must contain.
struct Case {
    name: &'static str,
    cert: Presented,
    check: fn(&TlsError) -> bool,
    says: &'static str,
}

fn bad_certificates(ca: &TestCa) -> Vec<Case> {
    let now = SystemTime::now();
    let server_uri = server_id().to_string();
    let client_uri = client_id().to_string();
    let other_ca = TestCa::new();
    vec![
        Case {
            name: "wrong trust domain",
            cert: ca.raw(RawLeaf::valid(vec![uri(
                "spiffe://evil.example/ns/default/sa/server",
            )])),
            check: |e| matches!(e, TlsError::WrongTrustDomain { got, expected, .. } if got == "evil.example" && expected == "cluster.local"),
            says: "trusts only \"cluster.local\"",
        },
        Case {
            name: "missing SPIFFE SAN",
            cert: ca.raw(RawLeaf::valid(vec![dns("server.default.svc")])),
            check: |e| matches!(e, TlsError::MissingSpiffeSan),
            says: "no spiffe:// URI SAN",
        },
        Case {
            name: "two URI SANs",
            cert: ca.raw(RawLeaf::valid(vec![uri(&server_uri), uri(&client_uri)])),
            check: |e| matches!(e, TlsError::MultipleUriSans { sans } if sans.len() == 2),
            says: "exactly one spiffe:// URI SAN",
        },
        Case {
            name: "CA certificate as leaf",
            cert: ca.raw(RawLeaf {
                is_ca: true,
                ..RawLeaf::valid(vec![uri(&server_uri)])
            }),
            check: |e| matches!(e, TlsError::CaCertAsLeaf),
            says: "presented a CA certificate",
        },
        Case {
            name: "expired",
            cert: ca.raw(RawLeaf {
                not_before: now - 2 * HOUR,
                not_after: now - HOUR,
                ..RawLeaf::valid(vec![uri(&server_uri)])
            }),
            check: |e| matches!(e, TlsError::Expired { .. }),
            says: "expired at",
        },
        Case {
            name: "not yet valid",
            cert: ca.raw(RawLeaf {
                not_before: now + HOUR,
                not_after: now + 2 * HOUR,
                ..RawLeaf::valid(vec![uri(&server_uri)])
            }),
            check: |e| matches!(e, TlsError::NotYetValid { .. }),
            says: "not valid before",
        },
        Case {
            name: "unknown issuer",
            cert: other_ca.ca.issue(&server_id(), HOUR).unwrap().into(),
            check: |e| matches!(e, TlsError::UnknownIssuer),
            says: "not issued by a trusted mesh root",
        },
    ]
}

#[tokio::test]
async fn client_refuses_bad_server_certificates() {
    let ca = TestCa::new();
    let client = ca.context(&[client_id()]);
    for case in bad_certificates(&ca) {
        let config = client.client_config(&client_id(), &[server_id()]).unwrap();
        let (c, _s) = handshake(config, case.cert.server_config()).await;
        let err = refusal(case.name, &c);
        assert!((case.check)(err), "{}: wrong variant {err:?}", case.name);
        assert!(err.to_string().contains(case.says), "{}: {err}", case.name);
        // The message reaches whoever logs the handshake's io::Error.
        let io_message = c.err().unwrap().to_string();
        assert!(
            io_message.contains(case.says),
            "{}: {io_message}",
            case.name
        );
    }
}

#[tokio::test]
async fn server_refuses_bad_client_certificates() {
    let ca = TestCa::new();
    let server = ca.context(&[server_id()]);
    for case in bad_certificates(&ca) {
        let config = server.server_config(&server_id()).unwrap();
        let (c, s) = handshake(case.cert.client_config(), config).await;
        let err = refusal(case.name, &s);
        assert!((case.check)(err), "{}: wrong variant {err:?}", case.name);
        assert!(err.to_string().contains(case.says), "{}: {err}", case.name);
        // The client learns only that it was refused (a TLS alert), at the latest on first read.
        if let Ok(mut c) = c {
            let mut buf = [0u8; 1];
            match c.read(&mut buf).await {
                Err(_) | Ok(0) => {}
                Ok(_) => panic!("{}: refused client could read data", case.name),
            }
        }
    }
}

#[tokio::test]
async fn server_requires_a_client_certificate() {
    let ca = TestCa::new();
    let server = ca.context(&[server_id()]);
    let (_c, s) = handshake(
        Presented::anonymous_client_config(),
        server.server_config(&server_id()).unwrap(),
    )
    .await;
    let Err(err) = s else {
        panic!("server accepted a client without certificate");
    };
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    assert_eq!(
        inner,
        Some(&rustls::Error::NoCertificatesPresented),
        "{err}"
    );
}

#[tokio::test]
async fn client_refuses_an_unexpected_server_identity() {
    let ca = TestCa::new();
    let client = ca.context(&[client_id()]);
    let server = ca.context(&[id("default", "impostor")]);
    let expected = [server_id(), id("default", "server-v2")];
    let (c, s) = handshake(
        client.client_config(&client_id(), &expected).unwrap(),
        server.server_config(&id("default", "impostor")).unwrap(),
    )
    .await;
    let err = refusal("unexpected identity", &c);
    match err {
        TlsError::UnexpectedPeer { expected: e, got } => {
            assert_eq!(got, &id("default", "impostor"));
            assert_eq!(e.len(), 2);
        }
        other => panic!("wrong variant {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("spiffe://cluster.local/ns/default/sa/impostor"),
        "{message}"
    );
    assert!(
        message.contains("spiffe://cluster.local/ns/default/sa/server,"),
        "{message}"
    );
    assert!(
        message.contains("spiffe://cluster.local/ns/default/sa/server-v2"),
        "{message}"
    );
    drop(s);
}

#[tokio::test]
async fn configs_need_a_local_certificate() {
    let ca = TestCa::new();
    let tls = ca.context(&[client_id()]);
    let missing = id("default", "nobody");
    let err = tls.client_config(&missing, &[server_id()]).unwrap_err();
    assert!(matches!(&err, TlsError::NoCertificate { identity } if identity == &missing));
    assert!(err.to_string().contains(
        "no certificate available for local identity spiffe://cluster.local/ns/default/sa/nobody"
    ));
    let err = tls.server_config(&missing).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }));
    assert!(matches!(
        tls.client_config(&client_id(), &[]).unwrap_err(),
        TlsError::NoExpectedPeer
    ));
    assert!(matches!(
        TlsContext::new("Not A Domain", Default::default(), Default::default()).unwrap_err(),
        TlsError::InvalidTrustDomain { .. }
    ));
}

#[tokio::test]
async fn rotation_applies_to_new_connections_only() {
    let ca = TestCa::new();
    let client = ca.context(&[client_id()]);
    let server = ca.context(&[server_id()]);
    let client_config = client.client_config(&client_id(), &[server_id()]).unwrap();
    let server_config = server.server_config(&server_id()).unwrap();
    let first_serial = server
        .store()
        .get(&server_id())
        .unwrap()
        .serial()
        .to_string();

    let (c, s) = handshake(client_config.clone(), server_config.clone()).await;
    let (mut old_c, mut old_s) = (c.unwrap(), s.unwrap());
    assert_eq!(served_serial(&old_c), first_serial);

    let rotated = ca.ca.issue(&server_id(), HOUR).unwrap();
    let second_serial = rotated.serial().to_string();
    assert_ne!(first_serial, second_serial);
    server.store().insert(rotated);

    // Same configs (as a pool would keep them): the new handshake picks up the new certificate.
    let (c, s) = handshake(client_config, server_config).await;
    let (new_c, _new_s) = (c.unwrap(), s.unwrap());
    assert_eq!(served_serial(&new_c), second_serial);

    // The connection made before the rotation still carries data both ways.
    old_c.write_all(b"still").await.unwrap();
    old_c.flush().await.unwrap();
    let mut buf = [0u8; 5];
    old_s.read_exact(&mut buf).await.unwrap();
    old_s.write_all(b"alive").await.unwrap();
    old_s.flush().await.unwrap();
    old_c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"alive");
}

#[tokio::test]
async fn replaced_roots_apply_to_the_next_handshake() {
    let ca = TestCa::new();
    let client = ca.context(&[client_id()]);
    let server = ca.context(&[server_id()]);
    let client_config = client.client_config(&client_id(), &[server_id()]).unwrap();
    let server_config = server.server_config(&server_id()).unwrap();

    client.set_roots(vec![TestCa::new().ca.root_der()]).unwrap();
    let (c, _s) = handshake(client_config.clone(), server_config.clone()).await;
    assert!(matches!(
        refusal("replaced roots", &c),
        TlsError::UnknownIssuer
    ));

    client.set_roots(vec![]).unwrap();
    let (c, _s) = handshake(client_config.clone(), server_config.clone()).await;
    assert!(matches!(refusal("no roots", &c), TlsError::NoTrustRoots));

    client.set_roots(vec![ca.ca.root_der()]).unwrap();
    let (c, _s) = handshake(client_config, server_config).await;
    c.unwrap();
}

/// Serial (hex) of the certificate the server presented on this connection.
fn served_serial(conn: &client::TlsStream<TcpStream>) -> String {
    use x509_parser::prelude::FromDer;
    let leaf = &conn.get_ref().1.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).unwrap();
    cert.raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

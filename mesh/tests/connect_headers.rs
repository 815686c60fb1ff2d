//! The CONNECT headers on the wire (#21): the client side as ztunnel's outbound runs it
//! (`connect_headers` for a captured app's source workload, `Pool::open`) against a plain
//! HTTP/2 server over real mTLS on loopback, which records the CONNECT as it arrives: a W3C
//! `traceparent` starting a new trace on every CONNECT, Istio's `baggage` keys describing the
//! source, `forwarded` with the app's address. Then amesh's own HBONE server receives a CONNECT
//! whose `baggage` and `forwarded` claim to be someone else: the identity it hands the handler
//! is the one the certificate proved.

mod hbone_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hbone_support::{client_id, server_id, TRUST_DOMAIN};
use http::HeaderMap;
use mesh::certs::{CertStore, LocalCa};
use mesh::hbone::{
    ConnectHandler, ConnectRequest, Drain, H2Settings, PendingTunnel, Pool, Refusal, Server,
    TunnelRequest,
};
use mesh::state::{TunnelProtocol, Workload, WorkloadType};
use mesh::tls::TlsContext;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A CA with the client's and the server's certificates.
fn tls() -> (tempfile::TempDir, TlsContext) {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_create(dir.path(), TRUST_DOMAIN).unwrap();
    let tls = TlsContext::new(TRUST_DOMAIN, CertStore::new(), ca.trust_roots()).unwrap();
    for id in [client_id(), server_id()] {
        tls.store()
            .insert(ca.issue(&id, Duration::from_secs(3600)).unwrap());
    }
    (dir, tls)
}

/// The source workload of the captured app: a Deployment's pod.
fn source() -> Workload {
    Workload {
        uid: "Kubernetes//v1/Pod/default/client-7d9f-abcde".into(),
        name: "client-7d9f-abcde".into(),
        namespace: "default".into(),
        identity: client_id(),
        addresses: vec!["10.244.1.7".parse().unwrap()],
        network: String::new(),
        protocol: TunnelProtocol::Hbone,
        node: "node1".into(),
        services: BTreeMap::new(),
        authorization_policies: Vec::new(),
        healthy: true,
        canonical_name: "client".into(),
        canonical_revision: "v1".into(),
        workload_name: "client".into(),
        workload_type: WorkloadType::Deployment,
        cluster_id: "Kubernetes".into(),
        waypoint: None,
    }
}

/// A plain HTTP/2 server (the `h2` crate, not amesh's) behind rustls with the server's
/// certificate: sends the headers of every request it receives to the returned channel and
/// answers 200.
async fn recording_server(tls: &TlsContext) -> (SocketAddr, mpsc::UnboundedReceiver<HeaderMap>) {
    let config = tls.server_config(&server_id()).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut h2) = h2::server::handshake(tls).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = h2.accept().await {
                    let mut headers = req.headers().clone();
                    // The pseudo-headers travel too: keep the method and authority to check.
                    headers.insert("x-seen-method", req.method().as_str().parse().unwrap());
                    if let Some(a) = req.uri().authority() {
                        headers.insert("x-seen-authority", a.as_str().parse().unwrap());
                    }
                    let _ = tx.send(headers);
                    let ok = http::Response::builder().status(200).body(()).unwrap();
                    let _ = respond.send_response(ok, false);
                }
            });
        }
    });
    (addr, rx)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} header in {h:?}"))
        .to_str()
        .unwrap_or_else(|_| panic!("{name} is not visible ASCII"))
}

/// W3C trace context, version 00: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`,
/// lower case, neither id all zeros. Returns the trace id.
fn check_traceparent(v: &str) -> String {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {v:?}");
    let lower_hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert_eq!(parts[0], "00", "version of {v:?}");
    assert!(lower_hex(parts[1], 32), "trace id of {v:?}");
    assert!(lower_hex(parts[2], 16), "parent id of {v:?}");
    assert!(lower_hex(parts[3], 2), "flags of {v:?}");
    assert!(
        parts[1].bytes().any(|b| b != b'0'),
        "all-zero trace id: {v:?}"
    );
    assert!(
        parts[2].bytes().any(|b| b != b'0'),
        "all-zero parent id: {v:?}"
    );
    parts[1].to_string()
}

/// W3C baggage: comma-separated `key=value` members, no properties here.
fn parse_baggage(v: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for member in v.split(',') {
        let (k, val) = member
            .trim()
            .split_once('=')
            .unwrap_or_else(|| panic!("baggage member {member:?} of {v:?} is not key=value"));
        assert!(
            !k.is_empty() && !val.is_empty() && !val.contains(';'),
            "member {member:?}"
        );
        assert!(
            out.insert(k.to_string(), val.to_string()).is_none(),
            "{k} twice in {v:?}"
        );
    }
    out
}

#[tokio::test]
async fn connect_carries_traceparent_and_istio_baggage_on_the_wire() {
    let (_ca, tls) = tls();
    let (server, mut seen) = recording_server(&tls).await;
    let pool = Pool::with_default_sockets(Arc::new(tls.clone()), H2Settings::default());
    let app: SocketAddr = "10.244.1.7:41234".parse().unwrap();
    let target: SocketAddr = "10.244.2.9:8080".parse().unwrap();
    let workload = source();
    let mut trace_ids = Vec::new();
    for _ in 0..2 {
        // As ztunnel's outbound builds a tunnel's request (outbound::tunnel_request).
        let req = TunnelRequest {
            source: client_id(),
            destination: server_id(),
            address: server,
            authority: target.to_string(),
            headers: mesh::hbone::connect_headers(
                app,
                Some("server.default.svc.cluster.local"),
                Some(&workload),
            ),
        };
        let connecting = tokio::time::timeout(Duration::from_secs(10), pool.open(req))
            .await
            .expect("the CONNECT is sent")
            .expect("the tunnel opens");
        let h = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .expect("the server saw a request")
            .unwrap();
        drop(connecting);
        assert_eq!(header(&h, "x-seen-method"), "CONNECT");
        assert_eq!(header(&h, "x-seen-authority"), target.to_string());
        trace_ids.push(check_traceparent(header(&h, "traceparent")));
        let baggage = parse_baggage(header(&h, "baggage"));
        let want: BTreeMap<String, String> = [
            ("k8s.cluster.name", "Kubernetes"),
            ("k8s.namespace.name", "default"),
            ("k8s.deployment.name", "client"),
            ("service.name", "client"),
            ("service.version", "v1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(baggage, want);
        assert_eq!(
            header(&h, "forwarded"),
            format!("for=\"{app}\";host=server.default.svc.cluster.local")
        );
    }
    // Each CONNECT starts a trace of its own.
    assert_ne!(trace_ids[0], trace_ids[1]);
}

/// Hands every CONNECT it receives to the test, refusing it (nothing needs relaying).
struct Record(mpsc::UnboundedSender<ConnectRequest>);

impl ConnectHandler for Record {
    async fn handle(&self, req: ConnectRequest, tunnel: PendingTunnel) {
        let _ = self.0.send(req);
        tunnel.refuse(Refusal::Unavailable, "recorded");
    }
}

#[tokio::test]
async fn the_server_takes_identity_from_the_certificate_not_the_headers() {
    let (_ca, tls) = tls();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = Server::new(
        Arc::new(tls.server_config(&server_id()).unwrap()),
        Record(tx),
        H2Settings::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_drain, watch) = Drain::new();
    tokio::spawn(server.serve(listener, watch, Duration::from_secs(5)));

    // The client (certificate: default/client) claims in its headers to be someone else.
    let mut headers = HeaderMap::new();
    headers.insert(
        "baggage",
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=kube-system,k8s.deployment.name=admin,service.name=admin,service.version=v9"
            .parse()
            .unwrap(),
    );
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            .parse()
            .unwrap(),
    );
    headers.insert("forwarded", "for=\"10.0.0.1:1\"".parse().unwrap());
    let pool = Pool::with_default_sockets(Arc::new(tls.clone()), H2Settings::default());
    let req = TunnelRequest {
        source: client_id(),
        destination: server_id(),
        address: addr,
        authority: "127.0.0.1:9".into(),
        headers,
    };
    let refused = tokio::time::timeout(Duration::from_secs(10), pool.connect(req))
        .await
        .expect("an answer");
    assert!(refused.is_err(), "the handler refuses");
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the handler saw the CONNECT")
        .unwrap();
    // The headers arrive (for telemetry) ...
    assert!(header(&got.headers, "baggage").contains("kube-system"));
    // ... but the identity is the certificate's, and the address the socket's.
    assert_eq!(got.peer_identity, client_id());
    assert_eq!(got.peer_addr.ip(), std::net::Ipv4Addr::LOCALHOST);
}

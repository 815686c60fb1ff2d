//! Demo: two workloads talk through a real HBONE tunnel on loopback, and a third is refused.
//!
//! A file-backed CA issues SPIFFE certificates; the "reviews" side runs an HBONE server whose
//! handler allows only callers from the `bookinfo` namespace and forwards allowed tunnels to an
//! echo app. Run with `cargo run -p amesh-mesh --example hbone_tunnel`.

use std::sync::Arc;
use std::time::Duration;

use mesh::certs::{CertStore, LocalCa};
use mesh::hbone::{
    forwarded_header, relay, ConnectHandler, ConnectRequest, Drain, H2Settings, PendingTunnel,
    Pool, Refusal, Server, TunnelRequest,
};
use mesh::tls::TlsContext;
use mesh::Identity;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TD: &str = "cluster.local";

/// What the server side saw, for the summary.
struct Event {
    peer: Identity,
    authority: String,
    forwarded_for: Option<std::net::SocketAddr>,
    verdict: String,
    bytes_in: u64,
    bytes_out: u64,
}

/// Allows callers from one namespace and forwards them to the `:authority` target.
struct NamespacePolicy {
    allowed_namespace: String,
    log: Arc<Mutex<Vec<Event>>>,
}

impl ConnectHandler for NamespacePolicy {
    async fn handle(&self, req: ConnectRequest, tunnel: PendingTunnel) {
        let mut event = Event {
            peer: req.peer_identity.clone(),
            authority: req.authority.to_string(),
            forwarded_for: req.forwarded_for(),
            verdict: String::new(),
            bytes_in: 0,
            bytes_out: 0,
        };
        if req.peer_identity.namespace() != self.allowed_namespace {
            let why = format!("only namespace {} may call reviews", self.allowed_namespace);
            tunnel.refuse(Refusal::Denied, &why);
            event.verdict = format!("denied (401: {why})");
        } else if let Some(target) = req.target_addr() {
            match TcpStream::connect(target).await {
                Ok(app) => match tunnel.accept() {
                    Ok(t) => {
                        let stats = relay(app, t).await;
                        event.verdict = "allowed (200)".into();
                        event.bytes_in = stats.sent;
                        event.bytes_out = stats.received;
                    }
                    Err(e) => event.verdict = format!("failed: {e}"),
                },
                Err(e) => {
                    tunnel.refuse(Refusal::Unavailable, &e.to_string());
                    event.verdict = format!("unavailable (503: {e})");
                }
            }
        }
        self.log.lock().push(event);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("amesh-demo-{}", std::process::id()));
    let ca = LocalCa::load_or_create(&dir, TD)?;
    let productpage = Identity::new(TD, "bookinfo", "productpage")?;
    let reviews = Identity::new(TD, "bookinfo", "reviews")?;
    let scraper = Identity::new(TD, "untrusted", "scraper")?;
    let tls = TlsContext::new(TD, CertStore::new(), ca.trust_roots())?;
    for id in [&productpage, &reviews, &scraper] {
        tls.store().insert(ca.issue(id, Duration::from_secs(3600))?);
    }

    // The "reviews" app: echoes what it gets.
    let app = TcpListener::bind("127.0.0.1:0").await?;
    let app_addr = app.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = app.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });

    // Its HBONE endpoint with the namespace policy.
    let log = Arc::new(Mutex::new(Vec::new()));
    let handler = NamespacePolicy {
        allowed_namespace: "bookinfo".into(),
        log: log.clone(),
    };
    let server = Server::new(
        Arc::new(tls.server_config(&reviews)?),
        handler,
        H2Settings::default(),
    );
    let hbone = TcpListener::bind("127.0.0.1:0").await?;
    let hbone_addr = hbone.local_addr()?;
    let (drain, watch) = Drain::new();
    let server_task = tokio::spawn(server.serve(hbone, watch, Duration::from_secs(5)));

    println!("amesh HBONE demo (loopback)");
    println!("  CA root:        {} (trust domain {TD})", dir.display());
    println!("  reviews app:    {app_addr} (echo)");
    println!("  reviews HBONE:  {hbone_addr} (mTLS 1.3 + HTTP/2 CONNECT)");
    println!("  policy:         only namespace bookinfo may call reviews\n");

    let pool = Pool::with_default_sockets(Arc::new(tls.clone()), H2Settings::default());
    let mut outcomes = Vec::new();
    for (caller, calls) in [(&productpage, 5), (&scraper, 1)] {
        for i in 0..calls {
            let client_addr: std::net::SocketAddr = format!("127.0.0.1:{}", 40000 + i).parse()?;
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::FORWARDED,
                forwarded_header(client_addr, Some("reviews.bookinfo.svc.cluster.local")),
            );
            let req = TunnelRequest {
                source: caller.clone(),
                destination: reviews.clone(),
                address: hbone_addr,
                authority: app_addr.to_string(),
                headers,
            };
            match pool.connect(req).await {
                Ok(mut tunnel) => {
                    let msg = format!("GET /reviews/{i} from {}", caller.service_account());
                    tunnel.write_all(msg.as_bytes()).await?;
                    tunnel.shutdown().await?;
                    let mut back = Vec::new();
                    tunnel.read_to_end(&mut back).await?;
                    let ok = back == msg.as_bytes();
                    outcomes.push(format!(
                        "  {caller} -> reviews: echo {} ({} bytes)",
                        if ok { "matched" } else { "DIFFERED" },
                        back.len()
                    ));
                }
                Err(e) => outcomes.push(format!("  {caller} -> reviews: refused: {e}")),
            }
        }
    }
    let pool_stats = pool.stats();

    drain.start();
    server_task.await?;
    let _ = std::fs::remove_dir_all(&dir);

    println!("Client side:");
    for line in outcomes {
        println!("{line}");
    }
    println!("\nServer side (reviews' HBONE endpoint):");
    println!(
        "  {:<48} {:<18} {:<22} {:>8} {:>8}  verdict",
        "peer identity (verified by mTLS)", "authority", "forwarded for", "in", "out"
    );
    let mut log = log.lock();
    log.sort_by(|a, b| a.peer.cmp(&b.peer));
    for e in log.iter() {
        println!(
            "  {:<48} {:<18} {:<22} {:>8} {:>8}  {}",
            e.peer.to_string(),
            e.authority,
            e.forwarded_for.map(|a| a.to_string()).unwrap_or_default(),
            e.bytes_in,
            e.bytes_out,
            e.verdict
        );
    }
    println!(
        "\nPool: {} HBONE connections opened for {} tunnels (one per source identity).",
        pool_stats.connections_opened,
        log.len()
    );
    Ok(())
}

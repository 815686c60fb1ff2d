//! Wiring: builds the waypoint's parts from its [`Config`] and runs them until told to stop,
//! then drains (stop accepting, GOAWAY, let requests finish until the deadline).

use std::sync::Arc;

use anyhow::Context;
use mesh::admin::{Endpoint, Readiness};
use mesh::certs::{
    CaClient, CaClientConfig, CertManager, CertStore, CertificateProvider, LocalCa, TrustRoots,
};
use mesh::hbone::{Drain, H2Settings, Pool, Server};
use mesh::limits::SourceLimits;
use mesh::state::StateStore;
use mesh::telemetry::LogReload;
use mesh::tls::TlsContext;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::admin::{Admin, Report};
use crate::config::{CaSource, Config, ControlPlane};
use crate::inbound::Inbound;
use crate::l7::store::{watch_file, Handler};
use crate::l7::L7Store;
use crate::metrics::Metrics;
use crate::upstream::Upstream;
use crate::Waypoint;

/// Connections per source address still in their TLS/HTTP/2 handshakes, and in all.
const PENDING_PER_SOURCE: usize = 64;
const PENDING_TOTAL: usize = 1024;

/// Serves the waypoint's identity on every HBONE connection.
struct OwnTls {
    tls: TlsContext,
    identity: mesh::Identity,
}

impl mesh::hbone::ServerTls for OwnTls {
    fn server_config(
        &self,
        _local: std::net::SocketAddr,
    ) -> Result<Arc<rustls::ServerConfig>, mesh::tls::TlsError> {
        self.tls.server_config(&self.identity)
    }
}

/// Runs the waypoint until SIGTERM/SIGINT or `/quitquitquit`.
pub async fn run(config: Config, log_reload: Option<LogReload>) -> anyhow::Result<()> {
    match mesh::limits::raise_fd_limit() {
        Ok(limit) => info!(limit, "open file limit"),
        Err(e) => warn!(error = %e, "cannot raise the open file limit"),
    }
    let store = CertStore::new();
    let (roots, provider): (TrustRoots, Arc<dyn CertificateProvider>) = match &config.ca {
        CaSource::LocalDir(dir) => {
            let ca = LocalCa::load_or_create(dir, config.identity.trust_domain())
                .with_context(|| format!("loading the local CA in {}", dir.display()))?;
            (ca.trust_roots(), Arc::new(ca))
        }
        CaSource::Remote { address, root } => {
            let root = root
                .as_deref()
                .map(|p| mesh::control::ControlRoot::load(p).context("CA_ROOT_CA"))
                .transpose()?;
            let client = CaClient::lazy(
                address,
                root.as_ref(),
                CaClientConfig {
                    cluster_id: config.cluster_id.clone(),
                    token: read_token(&config),
                    // The waypoint asks for its own identity, which its token proves.
                    impersonate: false,
                },
            )
            .with_context(|| format!("CA_ADDRESS={address}"))?;
            let client = Arc::new(client);
            if let Some(path) = &config.token_file {
                client.follow_token_file(path.clone());
            }
            (TrustRoots::empty(), client)
        }
    };
    let tls = TlsContext::new(config.identity.trust_domain(), store.clone(), roots.clone())
        .context("TRUST_DOMAIN")?;
    let certs = CertManager::new(store.clone(), roots, provider, config.cert_ttl);
    certs.ensure(&config.identity);

    let state = StateStore::new();
    let l7 = L7Store::default();
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let pool = Pool::with_default_sockets(Arc::new(tls.clone()), H2Settings::default());
    let waypoint = Arc::new(Waypoint::new(
        state.clone(),
        l7.clone(),
        Upstream::new(pool, config.identity.clone()),
        metrics,
        config.namespace.clone(),
        config.gateway.clone(),
        config.service_hostname(),
        config.instance_ip,
        config.identity.clone(),
        config.balancer,
        config.access_log,
    ));

    // Admin endpoints first: readiness says "not ready" until config and certificate are in.
    let ready = Readiness::default();
    let quit = Arc::new(Notify::new());
    let xds_status = Arc::new(std::sync::OnceLock::new());
    let admin = Arc::new(Admin {
        source: Report {
            waypoint: waypoint.clone(),
            registry,
            certs: store.clone(),
            roots: tls.roots().clone(),
            xds: xds_status.clone(),
        },
        ready: ready.clone(),
        log_reload,
        quit: quit.clone(),
    });
    for (addr, endpoint) in [
        (config.admin_addr, Endpoint::Admin),
        (config.stats_addr, Endpoint::Stats),
        (config.readiness_addr, Endpoint::Readiness),
    ] {
        let listener = mesh::admin::bind(addr, endpoint).await?;
        tokio::spawn(mesh::admin::serve(listener, admin.clone(), endpoint));
    }

    // Config.
    let _source: Box<dyn std::any::Any + Send> = match &config.control {
        ControlPlane::Files { l4, l7: l7_path } => {
            mesh::state::load_file(l4, &state)
                .with_context(|| format!("LOCAL_XDS_PATH={}", l4.display()))?;
            let l4_watch = mesh::state::watch_file(l4.clone(), state.clone());
            let l7_watch = match l7_path {
                Some(p) => {
                    l7.load_file(p)
                        .map_err(anyhow::Error::msg)
                        .context("AMESH_L7_PATH")?;
                    Some(watch_file(p.clone(), l7.clone()))
                }
                None => None,
            };
            Box::new((l4_watch, l7_watch))
        }
        ControlPlane::Xds { address, root } => {
            let node = amesh_proto::envoy::config::core::v3::Node {
                id: format!(
                    "waypoint~{}~{}.{}~{}.svc.{}",
                    config.instance_ip,
                    config.pod_name,
                    config.namespace,
                    config.namespace,
                    config.cluster_domain
                ),
                cluster: config.cluster_id.clone(),
                metadata: Some(node_metadata(&config)),
                ..Default::default()
            };
            let mut xds = mesh::xds::XdsConfig::new(address.clone(), node);
            xds.type_urls
                .push(amesh_proto::SERVICE_ROUTES_TYPE_URL.to_string());
            xds.type_urls
                .push(amesh_proto::L7_AUTHORIZATION_TYPE_URL.to_string());
            xds.type_urls
                .push(amesh_proto::REQUEST_AUTHENTICATION_TYPE_URL.to_string());
            xds.type_urls
                .push(amesh_proto::RATE_LIMIT_TYPE_URL.to_string());
            xds.token = config.token.clone();
            xds.token_file = config.token_file.clone();
            xds.root = root
                .as_deref()
                .map(|p| mesh::control::ControlRoot::load(p).context("XDS_ROOT_CA"))
                .transpose()?;
            let handle = mesh::xds::spawn(
                xds,
                Arc::new(Handler {
                    state: state.clone(),
                    l7: l7.clone(),
                }),
            )
            .with_context(|| format!("XDS_ADDRESS={address}"))?;
            let _ = xds_status.set(handle.watch_status());
            if let Err(e) = handle.wait_synced().await {
                warn!(error = %e, "xDS never synced");
            }
            Box::new(handle)
        }
    };

    // HBONE.
    let listener = tokio::net::TcpListener::bind(config.hbone_addr)
        .await
        .with_context(|| format!("binding HBONE on {}", config.hbone_addr))?;
    let server = Server::new(
        Arc::new(OwnTls {
            tls: tls.clone(),
            identity: config.identity.clone(),
        }),
        Inbound(waypoint.clone()),
        H2Settings::default(),
    )
    .with_pending_limits(SourceLimits::new(
        "pending HBONE handshakes",
        PENDING_PER_SOURCE,
        PENDING_TOTAL,
    ));
    let (drain, drain_watch) = Drain::new();
    let serving = tokio::spawn(server.serve(listener, drain_watch, config.drain_deadline));

    // Ready once the certificate is in hand.
    certs.wait_for(&config.identity).await;
    crate::inbound::log_bound(&waypoint);
    ready.set(true);
    info!(gateway = %format!("{}/{}", config.namespace, config.gateway), identity = %config.identity, "waypoint ready");

    tokio::select! {
        _ = mesh::drain::shutdown_signal() => info!("signal received: draining"),
        _ = quit.notified() => info!("/quitquitquit: draining"),
    }
    ready.set(false);
    drain.start();
    let _ = serving.await;
    certs.shutdown();
    info!("drained; exiting");
    Ok(())
}

/// Node metadata the controller reads to know which Gateway this waypoint implements.
fn node_metadata(config: &Config) -> prost_types::Struct {
    use prost_types::value::Kind;
    let s = |v: &str| prost_types::Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    prost_types::Struct {
        fields: [
            ("NAMESPACE".to_string(), s(&config.namespace)),
            ("GATEWAY_NAME".to_string(), s(&config.gateway)),
            (
                "SERVICE_ACCOUNT".to_string(),
                s(config.identity.service_account()),
            ),
            ("POD_NAME".to_string(), s(&config.pod_name)),
            ("NODE_NAME".to_string(), s(&config.node_name)),
        ]
        .into_iter()
        .collect(),
    }
}

fn read_token(config: &Config) -> Option<String> {
    config
        .token_file
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| t.trim().to_string())
        .or_else(|| config.token.clone())
}

//! Wiring: builds ztunnel's parts from its [`Config`] and runs them until told to stop.

use std::sync::Arc;

use anyhow::Context;
use mesh::certs::{
    CaClient, CaClientConfig, CertManager, CertStore, CertificateProvider, LocalCa, TrustRoots,
};
use mesh::hbone::H2Settings;
use mesh::state::StateStore;
use mesh::tls::TlsContext;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::admin::{Admin, Endpoint, LogReload, Readiness, Report};
use crate::capture::CaptureMode;
use crate::config::{CaSource, Config, ConfigSource, ProxyMode};
use crate::dns::Resolvers;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::pods::PodManager;
use crate::proxy::Shared;

/// Runs ztunnel until SIGTERM/SIGINT or `/quitquitquit`, then drains.
pub async fn run(config: Config, log_reload: Option<LogReload>) -> anyhow::Result<()> {
    // Before any pod's netns is entered: the namespace every thread returns to.
    crate::netns::init().context("opening ztunnel's own network namespace")?;
    // Every connection costs descriptors: take all the system allows, and keep a reserve that
    // only established connections may use (see mesh::limits).
    match mesh::limits::raise_fd_limit() {
        Ok(limit) => info!(limit, "open file limit"),
        Err(e) => warn!(error = %e, "cannot raise the open file limit"),
    }
    tokio::spawn(crate::memory::release_free_memory());
    let store = CertStore::new();
    let (roots, provider): (TrustRoots, Arc<dyn CertificateProvider>) = match &config.ca {
        CaSource::LocalDir(dir) => {
            let ca = LocalCa::load_or_create(dir, &config.trust_domain)
                .with_context(|| format!("loading the local CA in {}", dir.display()))?;
            (ca.trust_roots(), Arc::new(ca))
        }
        CaSource::Remote {
            address,
            root,
            server_name,
        } => {
            let root = load_root(root.as_deref(), "CA_ROOT_CA")?
                .map(|r| r.with_server_name(server_name.clone()));
            let client = CaClient::lazy(
                address,
                root.as_ref(),
                CaClientConfig {
                    cluster_id: config.cluster_id.clone(),
                    token: config.token.clone(),
                    impersonate: true,
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
    let tls = TlsContext::new(&config.trust_domain, store.clone(), roots.clone())
        .context("TRUST_DOMAIN")?;
    let certs = CertManager::new(store, roots, provider, config.cert_ttl);
    let state = StateStore::new();

    // Config source. Keep the handle alive for the life of the process.
    let metrics = Arc::new(Metrics::new());
    let (synced, _source) = start_config_source(&config, &state, &metrics)?;

    let shared = Arc::new(Shared {
        state,
        tls,
        certs: Some(certs),
        metrics,
        settings: H2Settings::default(),
        mark: config.packet_mark,
        node: config.node_name.clone(),
        limits: Limits::new(&config.limits),
        resolvers: Resolvers::new(&config.resolv_conf),
        cluster_domain: config.cluster_domain.clone(),
        dns_capture: config.dns_capture,
    });
    // With ZDS (`INPOD_UDS`), istio-cni installs the in-pod rules and replays its pods on every
    // connection, so ztunnel neither captures nor persists; amesh-cni's socket is not served.
    let zds = config.inpod_uds.is_some();
    let capture = match config.proxy_mode {
        ProxyMode::Shared if zds => CaptureMode::None,
        ProxyMode::Shared => config.capture,
        // The operator set up capture around a dedicated ztunnel.
        ProxyMode::Dedicated { .. } => CaptureMode::None,
    };
    let state_file = match config.proxy_mode {
        ProxyMode::Shared if zds => None,
        ProxyMode::Shared => Some(config.state_file.clone()),
        ProxyMode::Dedicated { .. } => None,
    };
    // Loading the eBPF program here makes a kernel or privilege problem a startup error.
    let capture = capture
        .backend_with_hops(&config.bpf_pin_dir, &config.hops)
        .with_context(|| format!("setting up capture ({capture:?})"))?;
    let mut pods = PodManager::new(shared.clone(), capture.clone(), state_file)
        .with_config_wait(config.pod_config_wait)
        .with_original_source(config.original_source)
        .with_drain_deadline(config.drain_deadline);
    if matches!(config.proxy_mode, ProxyMode::Dedicated { .. }) {
        pods = pods.with_own_netns();
    }
    let pods = Arc::new(pods);
    let ready = Readiness::default();
    let quit = Arc::new(Notify::new());
    let admin = Arc::new(Admin {
        source: Report {
            shared: shared.clone(),
            pods: pods.clone(),
            capture_mode: capture.mode(),
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

    // Ready means: config synced, and every pod we had before a restart captured again.
    synced.await;
    // Stops the CNI socket at shutdown: a draining ztunnel captures no new pod.
    let (cni_drain, cni_drain_watch) = mesh::drain::Drain::new();
    // Kept for the life of the process: dropping it stops the ZDS client.
    let _zds_client = match (&config.proxy_mode, &config.inpod_uds) {
        (ProxyMode::Shared, Some(socket)) => {
            let socket = socket.clone();
            info!(socket = %socket.display(), "taking pods from istio-cni (ZDS); waiting for its snapshot");
            let mut client = crate::zds::spawn(socket, shared.clone(), pods.clone());
            // As Istio's ztunnel: not ready before every pod istio-cni knows is served. That
            // may take forever (istio-cni missing), so a stop request still gets through.
            tokio::select! {
                _ = client.wait_synced() => {}
                _ = mesh::drain::shutdown_signal() => {
                    info!("signal received before istio-cni's snapshot: draining");
                    pods.shutdown(config.drain_deadline).await;
                    return Ok(());
                }
                _ = quit.notified() => {
                    info!("/quitquitquit before istio-cni's snapshot: draining");
                    pods.shutdown(config.drain_deadline).await;
                    return Ok(());
                }
            }
            Some(client)
        }
        (ProxyMode::Shared, None) => {
            let restored = pods.restore().await;
            info!(restored, "pods restored from the state file");
            // Before the CNI socket takes ADDs: what the previous process left for pods that
            // did not come back goes now (eBPF: their pinned links).
            capture.restored();
            let listener = crate::cni::agent::bind(&config.cni_socket).with_context(|| {
                format!("binding the CNI socket {}", config.cni_socket.display())
            })?;
            tokio::spawn(crate::cni::agent::serve_until(
                listener,
                pods.clone(),
                cni_drain_watch.clone(),
                config.drain_deadline,
            ));
            None
        }
        (
            ProxyMode::Dedicated {
                namespace, name, ..
            },
            _,
        ) => {
            let ip = own_ip(&shared, namespace, name)
                .with_context(|| format!("finding workload {namespace}/{name} in the config"))?;
            pods.add(crate::pods::AddPod {
                uid: format!("dedicated/{namespace}/{name}"),
                name: name.clone(),
                namespace: namespace.clone(),
                ip,
                netns: "/proc/self/ns/net".into(),
                service_account: None,
            })
            .await
            .context("serving the dedicated workload")?;
            None
        }
    };
    ready.set(true);
    info!(node = %config.node_name, "ztunnel ready");

    tokio::select! {
        _ = mesh::drain::shutdown_signal() => info!("signal received: draining"),
        _ = quit.notified() => info!("/quitquitquit: draining"),
    }
    ready.set(false);
    cni_drain.start();
    pods.shutdown(config.drain_deadline).await;
    info!("drained; exiting");
    Ok(())
}

/// Starts the configured source; the returned future resolves once the first config arrived.
fn start_config_source(
    config: &Config,
    state: &StateStore,
    metrics: &Metrics,
) -> anyhow::Result<(
    futures::future::BoxFuture<'static, ()>,
    Box<dyn std::any::Any + Send>,
)> {
    match &config.config_source {
        ConfigSource::LocalFile(path) => {
            // The first load must succeed: a ztunnel that starts on a broken file serves nothing.
            mesh::state::load_file(path, state)
                .with_context(|| format!("LOCAL_XDS_PATH={}", path.display()))?;
            let handle = mesh::state::watch_file(path.clone(), state.clone());
            Ok((Box::pin(async {}), Box::new(handle)))
        }
        ConfigSource::Xds {
            address,
            root,
            server_name,
        } => {
            // INSTANCE_IP as in Istio's DaemonSet (the downward API's pod IP); else a guess.
            let ip = std::env::var("INSTANCE_IP")
                .ok()
                .and_then(|v| v.parse().ok())
                .or_else(local_ip)
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
            let node = amesh_proto::envoy::config::core::v3::Node {
                id: config.xds_node_id(ip),
                cluster: config.cluster_id.clone(),
                ..Default::default()
            };
            let mut xds = mesh::xds::XdsConfig::new(address.clone(), node);
            xds.token = config.token.clone();
            xds.token_file = config.token_file.clone();
            xds.root = load_root(root.as_deref(), "XDS_ROOT_CA")?
                .map(|r| r.with_server_name(server_name.clone()));
            let handle = mesh::xds::spawn(xds, Arc::new(state.clone()))
                .with_context(|| format!("XDS_ADDRESS={address}"))?;
            // The xDS families of `/metrics` read the client's status.
            metrics.watch_xds(handle.watch_status());
            let synced = handle.wait_synced();
            Ok((
                Box::pin(async move {
                    if let Err(e) = synced.await {
                        warn!(error = %e, "xDS never synced");
                    }
                }),
                Box::new(handle),
            ))
        }
    }
}

fn local_ip() -> Option<std::net::IpAddr> {
    // The address the kernel would use toward a private destination; no packet is sent.
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("10.255.255.254:9").ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

fn own_ip(shared: &Shared, namespace: &str, name: &str) -> anyhow::Result<std::net::IpAddr> {
    let snapshot = shared.state.snapshot();
    let ip = snapshot
        .workloads()
        .find(|w| w.namespace == namespace && w.name == name)
        .and_then(|w| w.addresses.first().copied());
    ip.ok_or_else(|| anyhow::anyhow!("no workload {namespace}/{name} with an address"))
}

/// Reads the control plane's root certificate for a TLS address; `var` names the setting in
/// errors.
fn load_root(
    path: Option<&std::path::Path>,
    var: &str,
) -> anyhow::Result<Option<mesh::control::ControlRoot>> {
    path.map(|p| mesh::control::ControlRoot::load(p).with_context(|| var.to_string()))
        .transpose()
}

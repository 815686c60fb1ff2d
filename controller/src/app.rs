//! The controller as a whole: a source (a watched folder or the Kubernetes API) → debounced
//! translation → ADS server, and the CA, both served on a TLS port (15012, with a serving
//! certificate from the mesh CA) and/or a plaintext port (15010, local by default). On the
//! Kubernetes API the CA root comes from Istio's plug-in files when mounted, else from its
//! Secret, and is published for ztunnel; waypoint Gateways are deployed
//! ([`deployer`](crate::deployer)). `main.rs` parses flags and calls [`run`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mesh::certs::{LocalCa, CA_CERT_FILE, CA_KEY_FILE};
use tokio::net::TcpListener;
use tracing::info;

use crate::ca::root_secret::{self, Bootstrap};
use crate::ca::{Authenticator, CaService, NodeTokens, ObjectName, RootPublisher, TokenReviewer};
use crate::deployer::{WaypointDeployer, WaypointSettings};
use crate::jwks::JwksSettings;
use crate::source::{FolderSource, KubeSource};
use crate::tls::ServingCert;
use crate::translate::TranslateOptions;
use crate::xds::{spawn_publisher_with_jwks, AdsServer};

/// Where the manifests come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A folder of YAML manifests, watched for changes.
    Folder {
        /// The folder.
        dir: PathBuf,
        /// Quiet time after a change before the folder is reloaded.
        poll: Duration,
    },
    /// The Kubernetes API: of `kubeconfig`, or else as kube's `Config::infer` finds it
    /// (`$KUBECONFIG`, `~/.kube/config`, the pod's service account).
    Kube {
        /// A kubeconfig file.
        kubeconfig: Option<PathBuf>,
    },
}

/// How the CA and xDS streams authenticate callers.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Node bootstrap tokens: the CA and (when any are configured) xDS streams require one.
    NodeTokens(NodeTokens),
    /// Kubernetes TokenReview of node agents' ServiceAccount tokens.
    TokenReview {
        /// Audiences the token must be for (Istio: `istio-ca`).
        audiences: Vec<String>,
        /// User names of node agents (`system:serviceaccount:<ns>:<sa>`).
        node_agents: Vec<String>,
    },
}

/// The sockets to serve on; at least one.
#[derive(Debug)]
pub struct Listeners {
    /// TLS (15012).
    pub tls: Option<TcpListener>,
    /// Plaintext (15010): the lab's and local tools' port.
    pub plaintext: Option<TcpListener>,
    /// The live graph page (`--graph-addr`), off unless asked for.
    pub graph: Option<GraphListener>,
    /// The read-only debug endpoints (`--debug-addr`, [`debug`](crate::debug)): what
    /// `amesh status` reads.
    pub debug: Option<TcpListener>,
}

/// The live graph page's port and how often it scrapes the proxies
/// ([`graph_page`](crate::graph_page)).
#[derive(Debug)]
pub struct GraphListener {
    pub listener: TcpListener,
    pub interval: Duration,
}

/// Everything the controller needs to run.
#[derive(Debug)]
pub struct Config {
    /// Where the manifests come from.
    pub source: Source,
    /// Shortest time between two xDS publications.
    pub debounce: Duration,
    /// With the folder source, where the CA root lives (generated there on first start). With
    /// the Kubernetes API, where Istio's plug-in `cacerts` files may be mounted; when they are,
    /// they win over [`Config::ca_secret`].
    pub ca_dir: Option<PathBuf>,
    /// On the Kubernetes API without plug-in files: the Secret keeping the self-signed root.
    pub ca_secret: ObjectName,
    /// On the Kubernetes API: the namespace the root is published into, as the ConfigMap
    /// [`istio-ca-root-cert`](crate::ca::root_configmap::ROOT_CONFIGMAP).
    pub root_namespace: String,
    /// How callers authenticate.
    pub auth: Auth,
    /// Extra names (DNS or IP) of the TLS serving certificate, besides
    /// [`tls::DEFAULT_NAMES`](crate::tls::DEFAULT_NAMES).
    pub tls_names: Vec<String>,
    /// Longest certificate validity granted.
    pub max_ttl: Duration,
    /// Trust domain, cluster id and the rest of the translation's settings.
    pub translate: TranslateOptions,
    /// On the Kubernetes API: how waypoint Gateways are deployed, or `None` to leave them to
    /// someone else (the Gateways are still translated).
    pub waypoints: Option<WaypointSettings>,
    /// How RequestAuthentication `jwksUri` keys are fetched and refreshed.
    pub jwks: JwksSettings,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves ADS and the CA on `listeners` until `shutdown` resolves, then ends the ADS streams
/// (clients keep their config and reconnect elsewhere or later) and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if listeners.tls.is_none() && listeners.plaintext.is_none() {
        anyhow::bail!("nothing to serve on: both the TLS and the plaintext port are off");
    }
    let mut shutdown = Box::pin(shutdown);
    // First, so that it answers "not ready" while the CA and the source start.
    let debug_state = Arc::new(crate::debug::DebugState::default());
    let debug_task = listeners.debug.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "serving the debug endpoints");
        }
        crate::debug::spawn(listener, debug_state.clone())
    });
    // Whatever way `run` returns, the debug listener stops with it.
    let _debug_guard = debug_task.map(AbortOnDrop);
    let kube_client = match &config.source {
        Source::Folder { .. } => None,
        Source::Kube { kubeconfig } => {
            Some(crate::source::kube::client(kubeconfig.as_deref()).await?)
        }
    };
    let ca = tokio::select! {
        ca = load_ca(&config, kube_client.as_ref()) => Arc::new(ca?),
        () = &mut shutdown => {
            info!("stopped before the CA was ready");
            return Ok(());
        }
    };
    // The root never changes while the process runs (a new Secret or new plug-in files take
    // effect at restart); the watch is what the publisher follows, so it is kept until the end.
    debug_state.set_ca(&ca);
    let (root_tx, root_rx) = tokio::sync::watch::channel(ca.root_pem());
    // The deployer publishes the root into each waypoint's namespace too.
    let deployer_root = root_rx.clone();
    let root_publisher = kube_client
        .as_ref()
        .map(|client| RootPublisher::new(client.clone(), &config.root_namespace).spawn(root_rx));

    let (manifests, source) = match &kube_client {
        Some(client) => {
            // The first list can take long (or forever, if the API server is unreachable):
            // a signal meanwhile still stops the controller.
            tokio::select! {
                started = KubeSource::new(client.clone()).start() => started,
                () = &mut shutdown => {
                    info!("stopped before the Kubernetes API was listed");
                    return Ok(());
                }
            }
        }
        None => {
            let Source::Folder { dir, poll } = &config.source else {
                anyhow::bail!("the Kubernetes source has no client");
            };
            FolderSource::new(dir, *poll).start()
        }
    };
    let deployer = match (&kube_client, &config.waypoints) {
        (Some(client), Some(settings)) => {
            // A broken built-in template stops the controller now, naming the file and field,
            // instead of failing each waypoint later.
            crate::deployer::Template::builtin()
                .and_then(|template| template.check())
                .map_err(anyhow::Error::new)?;
            info!(image = settings.image, "deploying waypoint Gateways");
            Some(
                WaypointDeployer::new(client.clone(), settings.clone())
                    .spawn(manifests.clone(), deployer_root),
            )
        }
        _ => None,
    };
    // What amesh did with each VirtualService and DestinationRule, on its status.
    let status_reporter = kube_client.as_ref().map(|client| {
        crate::istio_status::StatusReporter::new(client.clone(), config.translate.clone())
            .spawn(manifests.clone())
    });
    let auth: Authenticator = match config.auth {
        Auth::NodeTokens(tokens) => tokens.into(),
        Auth::TokenReview {
            audiences,
            node_agents,
        } => {
            let client = match kube_client {
                Some(client) => client,
                None => crate::source::kube::client(None).await?,
            };
            info!(
                ?audiences,
                ?node_agents,
                "authenticating node agents with TokenReview"
            );
            TokenReviewer::new(client, audiences, node_agents, manifests.clone()).into()
        }
    };
    if auth.accepts_nobody() {
        tracing::warn!(
            "no node tokens configured (--tokens): the CA will refuse every request and xDS \
             streams are not authenticated"
        );
    }
    // Keys of jwksUris, fetched as istiod does; a change of keys republishes.
    let (keys, fetcher) = crate::jwks::spawn_fetcher(manifests.clone(), config.jwks);
    let (resources, publisher) = spawn_publisher_with_jwks(
        manifests.clone(),
        keys,
        config.translate.clone(),
        config.debounce,
    );
    debug_state.set_resources(resources.clone());
    let mut ads = AdsServer::new(resources);
    debug_state.set_clients(ads.clients());
    if !auth.accepts_nobody() {
        ads = ads.with_auth(auth.clone());
    }
    let graph_page = listeners.graph.map(|g| {
        if let Ok(addr) = g.listener.local_addr() {
            info!(%addr, interval = ?g.interval, "serving the live graph page");
        }
        crate::graph_page::spawn(g.listener, manifests.clone(), g.interval)
    });
    let ca_service = CaService::new(ca.clone(), auth, manifests, config.max_ttl);

    // On shutdown the source stops, which closes the snapshot watch, which ends every ADS
    // stream: without that the graceful shutdown would wait on them forever.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        info!("shutting down: closing xDS streams");
        source.abort();
        publisher.abort();
        fetcher.abort();
        if let Some(task) = root_publisher {
            task.abort();
        }
        if let Some(task) = deployer {
            task.abort();
        }
        if let Some(task) = status_reporter {
            task.abort();
        }
        if let Some(task) = graph_page {
            task.abort();
        }
        drop(root_tx);
        let _ = stop_tx.send(true);
    };
    tokio::spawn(signal);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    // Both ports with the same bounds (`listen`): streams and header size per connection,
    // request sizes per service, connections per source and in all.
    let router = || {
        crate::listen::grpc_server()
            .add_service(
                ads.clone()
                    .into_service()
                    .max_decoding_message_size(crate::listen::XDS_MAX_REQUEST),
            )
            .add_service(
                ca_service
                    .clone()
                    .into_service()
                    .max_decoding_message_size(crate::listen::CA_MAX_REQUEST),
            )
    };

    let mut servers = tokio::task::JoinSet::new();
    if let Some(listener) = listeners.tls {
        let addr = listener.local_addr().context("TLS listener address")?;
        let cert = Arc::new(
            ServingCert::issue(ca.clone(), &config.tls_names, crate::tls::SERVING_TTL)
                .context("TLS serving certificate")?,
        );
        info!(%addr, names = ?cert.names(), "serving xDS (delta ADS) and the CA over TLS");
        let refresh = cert.spawn_refresh();
        let incoming = crate::tls::incoming(listener, cert.server_config());
        let serve = router().serve_with_incoming_shutdown(incoming, stopped());
        servers.spawn(async move {
            let result = serve.await.context("gRPC server (TLS)");
            refresh.abort();
            result
        });
    }
    if let Some(listener) = listeners.plaintext {
        let addr = listener.local_addr().context("listener address")?;
        info!(%addr, "serving xDS (delta ADS) and the CA, plaintext gRPC");
        let incoming = crate::listen::plaintext(listener, crate::listen::Limits::default());
        let serve = router().serve_with_incoming_shutdown(incoming, stopped());
        servers.spawn(async move { serve.await.context("gRPC server (plaintext)") });
    }
    // The CA is loaded, the first translation published and the ports serve.
    debug_state.set_ready();
    while let Some(done) = servers.join_next().await {
        done.context("gRPC server task")??;
    }
    info!("stopped");
    Ok(())
}

/// The mesh CA: from the folder (folder source), or on the Kubernetes API from Istio's plug-in
/// files when `--ca-dir` holds them, else from the CA Secret (created on first start).
async fn load_ca(config: &Config, kube: Option<&kube::Client>) -> anyhow::Result<LocalCa> {
    let trust_domain = &config.translate.trust_domain;
    let from_dir = |dir: &Path| {
        LocalCa::load_or_create(dir, trust_domain)
            .with_context(|| format!("CA in {}", dir.display()))
    };
    let (ca, origin) = match (kube, &config.ca_dir) {
        (None, Some(dir)) => (from_dir(dir)?, dir.display().to_string()),
        (None, None) => anyhow::bail!("the folder source keeps its CA root in --ca-dir: give one"),
        // Either file present means the operator plugged a CA in: a half-present pair is
        // reported by the loader rather than silently replaced by the Secret.
        (Some(_), Some(dir))
            if dir.join(CA_CERT_FILE).exists() || dir.join(CA_KEY_FILE).exists() =>
        {
            (
                from_dir(dir)?,
                format!("plug-in CA files in {}", dir.display()),
            )
        }
        (Some(client), _) => {
            let (ca, how) =
                root_secret::load_or_create(client.clone(), &config.ca_secret, trust_domain)
                    .await?;
            let how = match how {
                Bootstrap::Loaded => "loaded",
                Bootstrap::Created => "created",
                Bootstrap::LostRace => "created by another controller",
            };
            (ca, format!("Secret {} ({how})", config.ca_secret))
        }
    };
    info!(
        from = origin,
        trust_domain = ca.trust_domain(),
        "CA root ready"
    );
    Ok(ca)
}

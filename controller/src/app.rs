//! The controller as a whole: a source (a watched folder or the Kubernetes API) → debounced
//! translation → ADS server, and the CA, both on one plaintext gRPC port. `main.rs` parses
//! flags and calls [`run`].

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mesh::certs::LocalCa;
use tokio::net::TcpListener;
use tracing::info;

use crate::ca::{CaService, NodeTokens};
use crate::source::{FolderSource, KubeSource};
use crate::translate::TranslateOptions;
use crate::xds::{spawn_publisher, AdsServer};

/// Where the manifests come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A folder of YAML manifests, scanned every `poll`.
    Folder {
        /// The folder.
        dir: PathBuf,
        /// Time between two scans.
        poll: Duration,
    },
    /// The Kubernetes API: of `kubeconfig`, or else as kube's `Config::infer` finds it
    /// (`$KUBECONFIG`, `~/.kube/config`, the pod's service account).
    Kube {
        /// A kubeconfig file.
        kubeconfig: Option<PathBuf>,
    },
}

/// Everything the controller needs to run.
#[derive(Debug)]
pub struct Config {
    /// Where the manifests come from.
    pub source: Source,
    /// Shortest time between two xDS publications.
    pub debounce: Duration,
    /// Where the CA root lives (generated there on first start).
    pub ca_dir: PathBuf,
    /// Node bootstrap tokens: the CA and (when any are configured) xDS streams require one.
    pub tokens: NodeTokens,
    /// Longest certificate validity granted.
    pub max_ttl: Duration,
    /// Trust domain, cluster id and the rest of the translation's settings.
    pub translate: TranslateOptions,
}

/// Serves ADS and the CA on `listener` until `shutdown` resolves, then ends the ADS streams
/// (clients keep their config and reconnect elsewhere or later) and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let ca = LocalCa::load_or_create(&config.ca_dir, &config.translate.trust_domain)
        .with_context(|| format!("CA in {}", config.ca_dir.display()))?;
    info!(dir = %config.ca_dir.display(), trust_domain = ca.trust_domain(), "CA root ready");
    if config.tokens.is_empty() {
        tracing::warn!(
            "no node tokens configured (--tokens): the CA will refuse every request and xDS \
             streams are not authenticated"
        );
    }

    let mut shutdown = Box::pin(shutdown);
    let (manifests, source) = match &config.source {
        Source::Folder { dir, poll } => FolderSource::new(dir, *poll).start(),
        Source::Kube { kubeconfig } => {
            let client = crate::source::kube::client(kubeconfig.as_deref()).await?;
            // The first list can take long (or forever, if the API server is unreachable):
            // a signal meanwhile still stops the controller.
            tokio::select! {
                started = KubeSource::new(client).start() => started,
                () = &mut shutdown => {
                    info!("stopped before the Kubernetes API was listed");
                    return Ok(());
                }
            }
        }
    };
    let (resources, publisher) =
        spawn_publisher(manifests.clone(), config.translate.clone(), config.debounce);
    let mut ads = AdsServer::new(resources);
    if !config.tokens.is_empty() {
        ads = ads.with_tokens(Arc::new(config.tokens.clone()));
    }
    let ca = CaService::new(Arc::new(ca), config.tokens, manifests, config.max_ttl);

    let addr = listener.local_addr().context("listener address")?;
    info!(%addr, "serving xDS (delta ADS) and the CA, plaintext gRPC");
    // On shutdown the source stops, which closes the snapshot watch, which ends every ADS
    // stream: without that the graceful shutdown would wait on them forever.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        info!("shutting down: closing xDS streams");
        source.abort();
        publisher.abort();
        let _ = stop_tx.send(());
    };
    tokio::spawn(signal);
    tonic::transport::Server::builder()
        .add_service(ads.into_service())
        .add_service(ca.into_service())
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                let _ = stop_rx.await;
            },
        )
        .await
        .context("gRPC server")?;
    info!("stopped");
    Ok(())
}

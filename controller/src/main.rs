//! `amesh-controller`: serves ztunnels their config (delta ADS) and certificates (Istio CA
//! service) from a watched folder of Kubernetes manifests or from the Kubernetes API. Flags are
//! in [`Args`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use controller::app::{self, Config, Source};
use controller::ca::{NodeTokens, DEFAULT_MAX_TTL};
use controller::TranslateOptions;
use tracing_subscriber::EnvFilter;

/// How long open connections get to close after SIGTERM before the process exits anyway.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// amesh control plane: manifests folder → xDS for ztunnels, plus the workload CA.
#[derive(Debug, Parser)]
#[command(name = "amesh-controller", version)]
struct Args {
    /// Where manifests come from: a folder (`--manifests`) or the Kubernetes API.
    #[arg(long, env = "AMESH_SOURCE", value_enum, default_value_t = SourceKind::Folder)]
    source: SourceKind,
    /// Folder of Kubernetes YAML manifests, watched for changes (`--source folder`).
    #[arg(long, env = "AMESH_MANIFESTS")]
    manifests: Option<PathBuf>,
    /// Kubeconfig file (`--source kube`); without it `$KUBECONFIG`, `~/.kube/config`, then
    /// the pod's service account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Address of the plaintext gRPC port serving both ADS and the CA.
    #[arg(long, env = "AMESH_XDS_ADDR", default_value = "127.0.0.1:15010")]
    xds_addr: SocketAddr,
    /// Folder of the CA root (`ca-key.pem`, `ca-cert.pem`, `root-cert.pem`), created on first
    /// start and reused afterwards.
    #[arg(long, env = "AMESH_CA_DIR")]
    ca_dir: PathBuf,
    /// Node bootstrap tokens file: lines `<token> <node name>`.
    #[arg(long, env = "AMESH_TOKENS")]
    tokens: Option<PathBuf>,
    /// A node token given directly, `<token>=<node name>`; repeatable.
    #[arg(long = "node-token", value_name = "TOKEN=NODE")]
    node_tokens: Vec<String>,
    /// Trust domain of workload identities.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Cluster id, the first part of workload uids.
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,
    /// Longest certificate validity granted, in seconds.
    #[arg(long, default_value_t = DEFAULT_MAX_TTL.as_secs())]
    max_cert_ttl_secs: u64,
    /// Milliseconds between two scans of the manifests folder.
    #[arg(long, default_value_t = 300)]
    poll_ms: u64,
    /// Shortest time between two xDS pushes, in milliseconds.
    #[arg(long, default_value_t = 100)]
    debounce_ms: u64,
}

/// Values of `--source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SourceKind {
    /// A watched folder of YAML manifests.
    Folder,
    /// The Kubernetes API (list and watch).
    Kube,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let mut tokens = match &args.tokens {
        Some(path) => NodeTokens::load(path)?,
        None => NodeTokens::default(),
    };
    for pair in &args.node_tokens {
        let (token, node) = pair
            .split_once('=')
            .filter(|(t, n)| !t.is_empty() && !n.is_empty())
            .context("--node-token expects <token>=<node name>")?;
        tokens.insert(token, node);
    }
    let source = match (args.source, args.manifests) {
        (SourceKind::Folder, Some(dir)) => Source::Folder {
            dir,
            poll: Duration::from_millis(args.poll_ms.max(10)),
        },
        (SourceKind::Folder, None) => anyhow::bail!("--source folder needs --manifests DIR"),
        (SourceKind::Kube, _) => Source::Kube {
            kubeconfig: args.kubeconfig,
        },
    };
    let config = Config {
        source,
        debounce: Duration::from_millis(args.debounce_ms),
        ca_dir: args.ca_dir,
        tokens,
        max_ttl: Duration::from_secs(args.max_cert_ttl_secs.max(1)),
        translate: TranslateOptions {
            trust_domain: args.trust_domain,
            cluster_id: args.cluster_id,
            ..TranslateOptions::default()
        },
    };

    let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.xds_addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.xds_addr))?;
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            signal().await;
            let _ = stopped_tx.send(());
        };
        let server = app::run(config, listener, shutdown);
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => result,
            _ = async {
                // Only once the signal came: give the drain its deadline.
                let _ = stopped_rx.await;
                tokio::time::sleep(DRAIN_DEADLINE).await;
            } => {
                tracing::warn!("connections still open after {DRAIN_DEADLINE:?}; exiting anyway");
                Ok(())
            }
        }
    })
}

/// SIGTERM (Kubernetes, the lab) or Ctrl-C.
async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupt"),
            }
        }
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

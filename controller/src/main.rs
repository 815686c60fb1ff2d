//! `amesh-controller`: serves ztunnels their config (delta ADS) and certificates (Istio CA
//! service) from a watched folder of Kubernetes manifests or from the Kubernetes API. Flags are
//! in [`Args`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use controller::app::{self, Auth, Config, Listeners, Source};
use controller::ca::{NodeTokens, ObjectName, DEFAULT_MAX_TTL};
use controller::deployer::WaypointSettings;
use controller::TranslateOptions;

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
    /// Address of the plaintext gRPC port serving both ADS and the CA (Istio's 15010), or
    /// `off`. Local by default: plaintext is for the lab and tools on the same host.
    #[arg(long, env = "AMESH_XDS_ADDR", default_value = "127.0.0.1:15010")]
    xds_addr: String,
    /// Address of the TLS gRPC port serving both ADS and the CA (Istio's 15012), or `off`. Its
    /// certificate is signed by the mesh CA, so clients verify it with the mesh root.
    #[arg(long, env = "AMESH_TLS_ADDR", default_value = "0.0.0.0:15012")]
    tls_addr: String,
    /// Extra DNS name or IP address in the TLS certificate (repeatable), besides
    /// istiod.istio-system.svc, amesh-controller.istio-system.svc, localhost and 127.0.0.1.
    #[arg(long = "tls-san", value_name = "NAME")]
    tls_sans: Vec<String>,
    /// How node agents and workloads (waypoints) authenticate: bootstrap tokens (`--tokens`),
    /// or Kubernetes TokenReview of their ServiceAccount token (a `--node-agent` is a node, any
    /// other ServiceAccount that workload). Default: token-review with `--source kube`,
    /// node-tokens otherwise.
    #[arg(long, env = "AMESH_AUTH", value_enum)]
    auth: Option<AuthKind>,
    /// Audience a reviewed token must be for (repeatable; `--auth token-review`).
    #[arg(long = "token-audience", default_value = controller::ca::token_review::DEFAULT_AUDIENCE)]
    token_audiences: Vec<String>,
    /// User name of a node agent allowed to obtain pod certificates and the mesh config
    /// (repeatable; `--auth token-review`).
    #[arg(long = "node-agent", default_value = controller::ca::token_review::DEFAULT_NODE_AGENT)]
    node_agents: Vec<String>,
    /// Folder of the CA root (`ca-key.pem`, `ca-cert.pem`, `root-cert.pem`). With `--source
    /// folder`: created on first start and reused afterwards. With `--source kube`: Istio's
    /// plug-in CA (the `cacerts` Secret mounted here); when it holds no CA files, the root is
    /// kept in `--ca-secret` instead.
    #[arg(long, env = "AMESH_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// `<namespace>/<name>` of the Secret keeping the self-signed CA root (`--source kube`
    /// without plug-in CA files): read on start, created with a new root if absent.
    #[arg(long, default_value = controller::ca::root_secret::DEFAULT_CA_SECRET)]
    ca_secret: ObjectName,
    /// Namespace the root is published into as the ConfigMap istio-ca-root-cert, which
    /// ztunnel mounts (`--source kube`).
    #[arg(long, default_value = controller::ca::root_configmap::DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,
    /// Bootstrap tokens file: lines `<token> <node name>` (a node agent) or
    /// `<token> workload <namespace>/<service account>` (a waypoint: its own identity only).
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
    /// Milliseconds of quiet after a change in the manifests folder before it is reloaded (the
    /// folder is watched; a stat-only check every 30 s catches what the watch misses).
    #[arg(long, default_value_t = 300)]
    poll_ms: u64,
    /// Deploy waypoint Gateways (class istio-waypoint) as istiod does: a ServiceAccount,
    /// Service and Deployment per Gateway, and its status (`--source kube`). `false` leaves them
    /// to another controller.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    deploy_waypoints: bool,
    /// Container image of the waypoints deployed.
    #[arg(long, env = "AMESH_WAYPOINT_IMAGE", default_value = controller::deployer::DEFAULT_IMAGE)]
    waypoint_image: String,
    /// The controller's address as waypoints reach it (their XDS_ADDRESS and CA_ADDRESS); its
    /// TLS certificate must hold the name (see --tls-san).
    #[arg(long, default_value = controller::deployer::DEFAULT_CONTROL_ADDRESS)]
    waypoint_control_address: String,
    /// Shortest time between two xDS pushes, in milliseconds.
    #[arg(long, default_value_t = 100)]
    debounce_ms: u64,
    /// How often RequestAuthentication jwksUri keys are fetched again (istiod: 20m); a failed
    /// fetch is retried after 5s. Gateway API duration, e.g. `20m`, `90s`.
    #[arg(long, env = "AMESH_JWKS_REFRESH", default_value = "20m", value_parser = controller::translate::parse_duration)]
    jwks_refresh: Duration,
    /// Serve the live service graph page (HTML, `/graph.json`, `/graph.svg`, `/graph.dot`) on
    /// this address, e.g. `0.0.0.0:15014`; off by default. The controller then scrapes every
    /// ztunnel's and waypoint's :15020/metrics every --graph-interval.
    #[arg(long, env = "AMESH_GRAPH_ADDR", default_value = "off")]
    graph_addr: String,
    /// Serve the read-only debug endpoints (`/debug/status`, `/debug/connections`, `/ready`:
    /// version, readiness, config version, connected xDS clients, CA root expiry; no secret)
    /// on this address, istiod's 15014 port; `off` (the default: a second controller on the
    /// same host would fail to bind it). The manifests in deploy/ turn it on.
    #[arg(long, env = "AMESH_DEBUG_ADDR", default_value = "off")]
    debug_addr: String,
    /// How often the graph page's scrapes run (Gateway API duration: `5s`, `1m`).
    #[arg(long, default_value = "5s", value_parser = controller::translate::parse_duration)]
    graph_interval: Duration,
}

/// Values of `--auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AuthKind {
    /// Node bootstrap tokens from `--tokens` / `--node-token`.
    NodeTokens,
    /// Kubernetes TokenReview.
    TokenReview,
}

/// An address flag: `off` (or empty) turns the port off.
fn optional_addr(flag: &str, value: &str) -> anyhow::Result<Option<SocketAddr>> {
    match value.trim() {
        "" | "off" | "none" => Ok(None),
        v => v
            .parse()
            .map(Some)
            .with_context(|| format!("{flag} {v:?}: expected host:port (an IP address) or `off`")),
    }
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
    // As every amesh binary: `RUST_LOG`, `LOG_FORMAT=json`, colour only on a terminal. On
    // stderr, where the controller has always logged.
    mesh::telemetry::init_to(
        mesh::telemetry::LogFormat::from_env(),
        "info",
        mesh::telemetry::LogOutput::Stderr,
    )
    .map_err(anyhow::Error::msg)?;
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
    let auth_kind = args.auth.unwrap_or(match args.source {
        SourceKind::Kube => AuthKind::TokenReview,
        SourceKind::Folder => AuthKind::NodeTokens,
    });
    let auth = match auth_kind {
        AuthKind::NodeTokens => Auth::NodeTokens(tokens),
        AuthKind::TokenReview => {
            if !tokens.is_empty() {
                anyhow::bail!("--tokens/--node-token are for --auth node-tokens, not token-review");
            }
            Auth::TokenReview {
                audiences: args.token_audiences,
                node_agents: args.node_agents,
            }
        }
    };
    let tls_addr = optional_addr("--tls-addr", &args.tls_addr)?;
    let plain_addr = optional_addr("--xds-addr", &args.xds_addr)?;
    let graph_addr = optional_addr("--graph-addr", &args.graph_addr)?;
    let debug_addr = optional_addr("--debug-addr", &args.debug_addr)?;
    if args.graph_interval < Duration::from_secs(1) {
        anyhow::bail!(
            "--graph-interval {:?}: at least 1s (each round scrapes every proxy)",
            args.graph_interval
        );
    }
    let graph_interval = args.graph_interval;
    if tls_addr.is_none() && plain_addr.is_none() {
        anyhow::bail!("--tls-addr and --xds-addr are both off: nothing to serve on");
    }
    if args.source == SourceKind::Folder && args.ca_dir.is_none() {
        anyhow::bail!("--source folder needs --ca-dir DIR (the CA root is kept there)");
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
    let translate = TranslateOptions {
        trust_domain: args.trust_domain,
        cluster_id: args.cluster_id,
        ..TranslateOptions::default()
    };
    let waypoints = args.deploy_waypoints.then(|| WaypointSettings {
        image: args.waypoint_image,
        control_address: args.waypoint_control_address,
        ..WaypointSettings::new(&translate)
    });
    let config = Config {
        source,
        debounce: Duration::from_millis(args.debounce_ms),
        ca_dir: args.ca_dir,
        ca_secret: args.ca_secret,
        root_namespace: args.root_namespace,
        auth,
        tls_names: args.tls_sans,
        max_ttl: Duration::from_secs(args.max_cert_ttl_secs.max(1)),
        translate,
        waypoints,
        jwks: controller::jwks::JwksSettings {
            refresh: args.jwks_refresh,
            ..Default::default()
        },
    };

    let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
    runtime.block_on(async move {
        let bind = |addr: Option<SocketAddr>| async move {
            match addr {
                Some(addr) => tokio::net::TcpListener::bind(addr)
                    .await
                    .map(Some)
                    .with_context(|| format!("cannot listen on {addr}")),
                None => Ok(None),
            }
        };
        let listeners = Listeners {
            tls: bind(tls_addr).await?,
            plaintext: bind(plain_addr).await?,
            graph: bind(graph_addr).await?.map(|listener| app::GraphListener {
                listener,
                interval: graph_interval,
            }),
            debug: bind(debug_addr).await?,
        };
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            signal().await;
            let _ = stopped_tx.send(());
        };
        let server = app::run(config, listeners, shutdown);
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

//! The command line: subcommands and their flags (clap), shared by `main.rs` and the shell
//! completions.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// amesh: inspect and explain an ambient mesh.
#[derive(Debug, Parser)]
#[command(name = "amesh", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the mesh runs: a Kubernetes cluster (the default: the current kubeconfig context) or
/// a lab on this machine.
#[derive(Debug, Args, Clone)]
pub struct TargetArgs {
    /// Inspect the lab with this id (`amesh-lab status` lists them) instead of a cluster.
    #[arg(long, global = true)]
    pub lab: Option<String>,
    /// kubeconfig context to use (default: the current one).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace the mesh's components run in.
    #[arg(long, global = true, default_value = "istio-system")]
    pub istio_namespace: String,
}

/// Output formats of the table commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The controller, each node's ztunnel and each waypoint: version, readiness, xDS, certificates.
    ///
    /// Reads the controller's debug endpoint (15014: version, readiness, config version, xDS
    /// clients, CA root expiry; a lab on a local config file has no controller and says so),
    /// and each ztunnel's and waypoint's readiness (15021) and /config_dump (version, xDS
    /// state, config version, certificates and earliest expiry, captured pods, capture mode).
    /// SYNC is the controller's view of each proxy's stream, as istioctl proxy-status shows it:
    /// SYNCED when every response sent is ACKed, STALE when not, NOT CONNECTED.
    /// CONFIG VERSION is the controller's digest of all it serves, and each proxy's own
    /// snapshot counter. Exits non-zero when a component is not ready or does not answer.
    Status(StatusArgs),
    /// What a ztunnel knows: workloads, services, policies or certificates.
    Config(ConfigArgs),
    /// What would happen to a connection or request, and why.
    Explain(ExplainArgs),
    /// The service graph from the proxies' metrics.
    Graph(GraphArgs),
    /// Shell completions on stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

/// The tables of `amesh config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConfigKind {
    Workloads,
    Services,
    Policies,
    Certificates,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[arg(value_enum)]
    pub kind: ConfigKind,
    /// The node whose ztunnel to read. Without it: workloads, services and policies from the
    /// first node's ztunnel (every ztunnel holds the whole mesh's), certificates from every
    /// node's ztunnel, with a NODE column.
    #[arg(long)]
    pub node: Option<String>,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The source pod, `NAME` or `NAMESPACE/NAME`.
    pub source: String,
    /// The destination, `HOST:PORT` or `IP:PORT` (a Service name, its FQDN, or an address).
    pub destination: String,
    /// Explain an HTTP request: `--http GET /path`.
    #[arg(long, num_args = 2, value_names = ["METHOD", "PATH"])]
    pub http: Option<Vec<String>>,
    /// A request header for `--http`, `K=V` (repeatable).
    #[arg(long = "header", value_name = "K=V")]
    pub headers: Vec<String>,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

/// Output formats of `amesh graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum GraphOutput {
    #[default]
    Svg,
    Png,
    Dot,
    Json,
}

#[derive(Debug, Args)]
pub struct GraphArgs {
    /// The window rates are computed over (`0s`, `10s`, `5m`; at most `10m`).
    ///
    /// The proxies keep counters, not history, so a rate needs two readings `--since` apart.
    /// Where the controller's live graph page runs (a lab started with `--graph-port`), it
    /// keeps readings of the last minutes and answers at once with the rates over `--since`
    /// (as near as its readings allow; shorter if it has not run that long). Otherwise amesh
    /// reads every ztunnel's and waypoint's metrics now and again after `--since` (it waits),
    /// and prints the rates between the two readings. `--since 0s` reads once: totals since
    /// each proxy started, no rates.
    #[arg(long, default_value = "10s")]
    pub since: String,
    /// svg (drawn by amesh), dot (Graphviz), png (Graphviz's `dot -Tpng`), json (the model).
    #[arg(short, long, value_enum, default_value_t)]
    pub output: GraphOutput,
}

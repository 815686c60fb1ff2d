//! What a run measures and for how long: the full run, `--quick` for CI smoke, and overrides.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use lab::mesh::ControlPlane;
use serde::Serialize;

/// Which layout the benchmark brings up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// A two-node lab: pods in their own netns, ztunnel in its pod, capture in the pods.
    Lab,
    /// Two netns joined by a veth, one dedicated-mode ztunnel in each, apps beside them.
    Pair,
}

/// Command line of `amesh-bench`.
#[derive(Debug, Parser)]
#[command(
    name = "amesh-bench",
    about = "Measures the mesh path (HBONE between two ztunnels) against the direct path on a \
             two-node lab (or, with --layout pair, two namespaces with a dedicated-mode ztunnel \
             each), in the same run: throughput, request/response latency, connection rate, \
             ztunnel CPU and memory."
)]
pub struct Cli {
    /// `lab`: the two-node lab; `pair`: two namespaces joined by a veth, one ztunnel each in
    /// dedicated mode, measuring HBONE and plain-TCP passthrough, pinned and unpinned.
    #[arg(long, value_enum, default_value_t = Layout::Lab)]
    pub layout: Layout,
    /// Pair layout: ZTUNNEL_WORKER_THREADS for both ztunnels (unset: ztunnel's own default).
    #[arg(long, env = "ZTUNNEL_WORKER_THREADS")]
    pub workers: Option<usize>,
    /// CI smoke: 2 s throughput runs, 2,000 round trips, small connection counts, one repetition.
    #[arg(long)]
    pub quick: bool,
    /// Where the JSON result goes (default: `target/bench/<layout>.json`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Repetitions of every measurement (medians are reported).
    #[arg(long)]
    pub reps: Option<usize>,
    /// Seconds per throughput run.
    #[arg(long)]
    pub seconds: Option<u64>,
    /// ztunnel's capture mode.
    #[arg(long, env = "CAPTURE_MODE", default_value = "nft")]
    pub capture_mode: String,
    /// A second lab with this capture mode runs beside the first, and its mesh path is
    /// measured in the same repetitions ("none": no second lab).
    #[arg(long, default_value = "ebpf")]
    pub compare_capture: String,
    /// Where the ztunnels get config and certificates: the lab's local file (each ztunnel
    /// signs its own certificates with the lab CA), or `amesh-controller` over xDS. The data
    /// path measured is the same; the file saves building the controller.
    #[arg(long, env = "AMESH_LAB_CONTROL_PLANE", value_enum,
          default_value_t = ControlPlane::LocalFile)]
    pub control_plane: ControlPlane,
    /// Manifests folder of the cluster (default: the fixture shipped with the bench).
    #[arg(long)]
    pub fixture: Option<PathBuf>,
}

/// Everything that bounds a run; recorded in the JSON next to the results.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub mode: &'static str,
    pub layout: Layout,
    /// Pair layout: worker threads asked of each ztunnel (None: ztunnel's default).
    pub workers: Option<usize>,
    pub repetitions: usize,
    /// Length of each throughput run.
    pub throughput_secs: u64,
    /// Size of each write in a throughput run.
    pub write_size: usize,
    /// Request and response size of the latency run.
    pub rr_size: usize,
    /// Round trips per latency run, unless `rr_max_secs` ends it first.
    pub rr_count: usize,
    pub rr_max_secs: u64,
    /// Connections per serial connection-rate run (bounded by `conn_max_secs` too).
    pub conn_serial: usize,
    /// Connections per parallel run, spread over `conn_parallelism` threads.
    pub conn_parallel: usize,
    pub conn_parallelism: usize,
    pub conn_max_secs: u64,
    /// Tunnelled connections held open to measure ztunnel memory per connection.
    pub held_connections: usize,
    pub capture_mode: String,
    /// Capture mode of the second lab's mesh path, if any.
    pub compare_capture: Option<String>,
    /// See [`Cli::control_plane`]; recorded by name (`file`, `controller`).
    #[serde(serialize_with = "control_plane_name")]
    pub control_plane: ControlPlane,
    pub fixture: PathBuf,
}

impl Cli {
    /// Where the JSON result goes.
    pub fn out_path(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            let layout = match self.layout {
                Layout::Lab => "lab",
                Layout::Pair => "pair",
            };
            PathBuf::from(format!("target/bench/{layout}.json"))
        })
    }
}

impl Settings {
    pub fn from_cli(cli: &Cli) -> Settings {
        let fixture = cli.fixture.clone().unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures")
                .join("lab")
        });
        let compare = Some(cli.compare_capture.clone())
            .filter(|m| m != "none" && !m.is_empty() && *m != cli.capture_mode);
        let base = if cli.quick {
            Settings {
                mode: "quick",
                layout: cli.layout,
                workers: cli.workers,
                repetitions: 1,
                throughput_secs: 2,
                write_size: 256 * 1024,
                rr_size: 1024,
                rr_count: 2_000,
                rr_max_secs: 2,
                conn_serial: 300,
                conn_parallel: 800,
                conn_parallelism: 8,
                conn_max_secs: 2,
                held_connections: 1_000,
                capture_mode: cli.capture_mode.clone(),
                compare_capture: compare.clone(),
                control_plane: cli.control_plane,
                fixture,
            }
        } else {
            // Connection counts stay well below the ephemeral port range even with every
            // closed connection in TIME_WAIT for a minute (3 reps × 6,000 < 28,000).
            Settings {
                mode: "full",
                layout: cli.layout,
                workers: cli.workers,
                repetitions: 3,
                throughput_secs: 10,
                write_size: 256 * 1024,
                rr_size: 1024,
                rr_count: 20_000,
                rr_max_secs: 10,
                conn_serial: 2_000,
                conn_parallel: 4_000,
                conn_parallelism: 8,
                conn_max_secs: 10,
                held_connections: 1_000,
                capture_mode: cli.capture_mode.clone(),
                compare_capture: compare.clone(),
                control_plane: cli.control_plane,
                fixture,
            }
        };
        Settings {
            repetitions: cli.reps.unwrap_or(base.repetitions).max(1),
            throughput_secs: cli.seconds.unwrap_or(base.throughput_secs).max(1),
            ..base
        }
    }

    pub fn throughput_duration(&self) -> Duration {
        Duration::from_secs(self.throughput_secs)
    }
}

fn control_plane_name<S: serde::Serializer>(c: &ControlPlane, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(c.name())
}

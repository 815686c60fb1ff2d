//! `amesh-cni install`: the DaemonSet's install step. It copies the plugin binary into the
//! host's CNI bin dir, appends amesh's entry to the chain of the node's primary CNI config
//! (converting a single-plugin `.conf` to a list), writes the plugin's kubeconfig, and keeps
//! the entry there while it runs; on SIGTERM with `--uninstall-on-exit` it takes it all out.
//!
//! The conf dir is watched with inotify (the `notify` crate): network agents (Calico, Cilium,
//! flannel) rewrite their config when they restart, and a pod started in that gap would miss
//! capture, so the entry goes back as soon as the file is closed, not at the next poll. A slow
//! re-check ([`RECHECK`]) covers what an event cannot report (a lost event queue, the
//! service-account token rotating); a config that cannot be parsed is retried every
//! [`RETRY`], and so is a dir that cannot be watched (no inotify, or the dir is gone; a dir
//! made again is watched again). The loop never spins: a pass that finds the entry in place writes nothing, so
//! its own reads and writes do not wake it again.

pub mod conf;
pub mod json;
pub mod node;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use self::conf::Entry;
use self::node::State;

/// Re-check of the conf dir when nothing was reported.
pub const RECHECK: Duration = Duration::from_secs(30);
/// Retry of a conf dir that could not be used (a config half-written, a write that failed).
pub const RETRY: Duration = Duration::from_secs(2);
/// Quiet time after a change before acting on it, so a burst of writes costs one pass.
const SETTLE: Duration = Duration::from_millis(100);
/// Longest a burst of changes delays a pass.
const MAX_SETTLE: Duration = Duration::from_secs(1);

/// The installer's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// The host's CNI bin dir, as mounted in this container.
    #[arg(long, default_value = "/host/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The host's CNI conf dir, as mounted in this container.
    #[arg(long, default_value = "/host/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The same conf dir as the host sees it (the plugin runs on the host and finds its
    /// kubeconfig there).
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub host_cni_conf_dir: PathBuf,
    /// The plugin binary to install (default: this executable).
    #[arg(long)]
    pub plugin_binary: Option<PathBuf>,
    /// ztunnel's node-agent socket as the host sees it.
    #[arg(long, default_value = super::DEFAULT_SOCKET)]
    pub ztunnel_socket: PathBuf,
    /// A kubeconfig for the plugin, as the host sees it; the installer then writes none. By
    /// default, in a cluster, it writes one from its service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The service account whose token and CA go into the plugin's kubeconfig.
    #[arg(long, default_value = "/var/run/secrets/kubernetes.io/serviceaccount")]
    pub service_account_dir: PathBuf,
    /// The API server's address (set by Kubernetes in every pod).
    #[arg(long, env = "KUBERNETES_SERVICE_HOST", hide = true)]
    pub kubernetes_service_host: Option<String>,
    #[arg(
        long,
        env = "KUBERNETES_SERVICE_PORT",
        hide = true,
        default_value = "443"
    )]
    pub kubernetes_service_port: String,
    /// Namespaces whose pods the plugin never captures (comma-separated; default the
    /// plugin's own, kube-system).
    #[arg(long, value_delimiter = ',')]
    pub exclude_namespaces: Option<Vec<String>>,
    /// Install once and exit (no watch): exit 1 when there is no usable primary config.
    #[arg(long, conflicts_with_all = ["check", "uninstall_on_exit"])]
    pub once: bool,
    /// On SIGTERM/SIGINT, take amesh out of the CNI chain and remove the copied binary.
    #[arg(long)]
    pub uninstall_on_exit: bool,
    /// Exit 0 when the primary config carries amesh's entry and the binary is installed,
    /// else print why and exit 1 (the DaemonSet's readiness probe). Changes nothing.
    #[arg(long)]
    pub check: bool,
}

/// The plugin's kubeconfig: the one given, or the one the installer writes.
enum KubeconfigPlan {
    None,
    Given(PathBuf),
    /// Written from the service account for this server, at `local`, named `host` in the entry.
    Write {
        server: String,
        local: PathBuf,
        host: PathBuf,
    },
}

impl InstallArgs {
    fn kubeconfig_plan(&self) -> KubeconfigPlan {
        if let Some(k) = &self.kubeconfig {
            return KubeconfigPlan::Given(k.clone());
        }
        let Some(host) = self
            .kubernetes_service_host
            .as_deref()
            .filter(|h| !h.is_empty())
        else {
            return KubeconfigPlan::None;
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        KubeconfigPlan::Write {
            server: format!("https://{host}:{}", self.kubernetes_service_port),
            local: self.cni_conf_dir.join(node::KUBECONFIG_NAME),
            host: self.host_cni_conf_dir.join(node::KUBECONFIG_NAME),
        }
    }
}

/// Runs `amesh-cni install`; returns the process's exit code.
pub fn main(args: InstallArgs) -> i32 {
    if args.check {
        return check(&args);
    }
    if let Err(e) = mesh::telemetry::init(mesh::telemetry::LogFormat::from_env()) {
        eprintln!("amesh-cni install: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(run(args))
}

fn check(args: &InstallArgs) -> i32 {
    let binary = args.cni_bin_dir.join(conf::PLUGIN_TYPE);
    if !binary.is_file() {
        println!("not installed: {} is missing", binary.display());
        return 1;
    }
    match node::check(&args.cni_conf_dir) {
        Ok(path) => {
            println!("installed in {}", path.display());
            0
        }
        Err(e) => {
            println!("not installed: {e}");
            1
        }
    }
}

/// What the installer did that uninstall undoes.
struct Installed {
    binary: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
}

async fn run(args: InstallArgs) -> i32 {
    // Signals first: a SIGTERM during the first pass must not kill us before we clean up.
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            error!("cannot handle signals: {e}");
            return 1;
        }
    };
    let source = match &args.plugin_binary {
        Some(p) => p.clone(),
        None => match std::env::current_exe() {
            Ok(p) => p,
            Err(e) => {
                error!("cannot find this executable to install it (pass --plugin-binary): {e}");
                return 1;
            }
        },
    };
    let copied = match node::copy_binary(&source, &args.cni_bin_dir) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return 1;
        }
    };
    let plan = args.kubeconfig_plan();
    let entry = Entry {
        ztunnel_socket: args.ztunnel_socket.clone(),
        kubeconfig: match &plan {
            KubeconfigPlan::None => None,
            KubeconfigPlan::Given(p) => Some(p.clone()),
            KubeconfigPlan::Write { host, .. } => Some(host.clone()),
        },
        exclude_namespaces: args.exclude_namespaces.clone(),
    };
    let installed = Installed {
        binary: copied.then(|| args.cni_bin_dir.join(conf::PLUGIN_TYPE)),
        kubeconfig: match &plan {
            KubeconfigPlan::Write { local, .. } => Some(local.clone()),
            _ => None,
        },
    };
    if let Err(e) = std::fs::create_dir_all(&args.cni_conf_dir) {
        warn!(dir = %args.cni_conf_dir.display(), "cannot create the CNI conf dir: {e}");
    }
    let changed = Arc::new(Notify::new());
    let mut watch = DirWatch {
        dir: args.cni_conf_dir.clone(),
        changed: changed.clone(),
        armed: None,
        lost: Arc::new(AtomicBool::new(false)),
        warned: false,
    };
    let mut last: Option<State> = None;
    loop {
        // Armed before the pass, so a change made during it wakes the next one.
        let watching = !args.once && watch.ensure();
        let state = pass(&args, &source, &plan, &entry);
        if last.as_ref() != Some(&state) {
            report(&state, &args);
        }
        if args.once {
            return match state {
                State::Installed(_) => 0,
                _ => 1,
            };
        }
        let wait = match state {
            State::Blocked(_) => RETRY,
            // Unwatched (no inotify, or the dir is gone): a short poll instead.
            _ if !watching => RETRY,
            _ => RECHECK,
        };
        last = Some(state);
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = changed.notified() => settle(&changed).await,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    if !args.uninstall_on_exit {
        info!("stopping; amesh-cni stays installed (no --uninstall-on-exit)");
        return 0;
    }
    uninstall(&args, &installed)
}

/// One pass: the binary, the kubeconfig, the entry.
fn pass(
    args: &InstallArgs,
    source: &std::path::Path,
    plan: &KubeconfigPlan,
    entry: &Entry,
) -> State {
    if !args.cni_bin_dir.join(conf::PLUGIN_TYPE).is_file() {
        if let Err(e) = node::copy_binary(source, &args.cni_bin_dir) {
            return State::Blocked(e);
        }
    }
    if let KubeconfigPlan::Write { server, local, .. } = plan {
        let written = node::kubeconfig(server, &args.service_account_dir)
            .and_then(|bytes| node::write_if_changed(local, &bytes));
        match written {
            Ok(true) => info!(kubeconfig = %local.display(), "wrote the plugin's kubeconfig"),
            Ok(false) => {}
            Err(e) => return State::Blocked(e),
        }
    }
    node::install_entry(&args.cni_conf_dir, entry)
}

fn report(state: &State, args: &InstallArgs) {
    match state {
        State::Installed(path) => info!(config = %path.display(), "amesh-cni is in the CNI chain"),
        State::NoPrimary => warn!(
            dir = %args.cni_conf_dir.display(),
            "no CNI config yet; waiting for the node's network plugin to write one"
        ),
        State::Blocked(e) => error!("{e}; retrying every {RETRY:?}"),
    }
}

fn uninstall(args: &InstallArgs, installed: &Installed) -> i32 {
    let mut ok = node::uninstall_entries(&args.cni_conf_dir);
    for path in [&installed.kubeconfig, &installed.binary]
        .into_iter()
        .flatten()
    {
        match std::fs::remove_file(path) {
            Ok(()) => info!(file = %path.display(), "removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                error!(file = %path.display(), "cannot remove: {e}");
                ok = false;
            }
        }
    }
    if ok {
        info!("amesh-cni uninstalled");
        0
    } else {
        1
    }
}

/// The inotify watch of the conf dir. A watch follows the directory's inode, not its path, so
/// a directory removed and made again is watched again (its id changed).
struct DirWatch {
    dir: PathBuf,
    changed: Arc<Notify>,
    /// The watch and the (device, inode) of the directory it watches.
    armed: Option<(RecommendedWatcher, (u64, u64))>,
    /// Set by the watch when the directory itself went away (removed or renamed): a new one
    /// may have the old one's inode number, so the id alone would not tell.
    lost: Arc<AtomicBool>,
    /// Whether the failure to watch was logged (once until it works again).
    warned: bool,
}

impl DirWatch {
    /// Watches the directory now at the path unless that is done; whether it is watched.
    fn ensure(&mut self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let id = std::fs::metadata(&self.dir)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let lost = self.lost.swap(false, Ordering::Relaxed);
        if let (Some((_, watched)), Some(id), false) = (&self.armed, id, lost) {
            if *watched == id {
                return true;
            }
        }
        self.armed = None;
        let armed = id
            .ok_or_else(|| "it does not exist".to_string())
            .and_then(|id| {
                arm(&self.dir, self.changed.clone(), self.lost.clone())
                    .map(|w| (w, id))
                    .map_err(|e| {
                        format!("{e} (check fs.inotify.max_user_watches and max_user_instances)")
                    })
            });
        match armed {
            Ok(a) => {
                if self.warned {
                    info!(dir = %self.dir.display(), "watching the CNI conf dir again");
                }
                self.warned = false;
                self.armed = Some(a);
                true
            }
            Err(e) => {
                if !self.warned {
                    warn!(dir = %self.dir.display(),
                        "cannot watch the CNI conf dir: {e}; checking it every {RETRY:?} instead");
                }
                self.warned = true;
                false
            }
        }
    }
}

/// An inotify watch of `dir` that wakes `changed` on anything but reads, and sets `lost` when
/// `dir` itself is removed or renamed.
fn arm(
    dir: &std::path::Path,
    changed: Arc<Notify>,
    lost: Arc<AtomicBool>,
) -> notify::Result<RecommendedWatcher> {
    let watched = dir.to_path_buf();
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(e) = &event {
            let gone = matches!(
                e.kind,
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
            );
            if gone && e.paths.iter().any(|p| p == &watched) {
                lost.store(true, Ordering::Relaxed);
            }
        }
        let relevant = match &event {
            // Reading a file opens and closes it: not a change (else our own reads would wake
            // the loop forever).
            Ok(e) => match e.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                EventKind::Access(_) => false,
                _ => true,
            },
            // A lost event queue may hide a change.
            Err(_) => true,
        };
        if relevant {
            changed.notify_one();
        }
    };
    let mut watcher = RecommendedWatcher::new(handler, notify::Config::default())?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Waits until the conf dir has been quiet for [`SETTLE`] (at most [`MAX_SETTLE`]).
async fn settle(changed: &Notify) {
    let deadline = tokio::time::Instant::now() + MAX_SETTLE;
    loop {
        let quiet = tokio::time::sleep(SETTLE);
        tokio::select! {
            _ = changed.notified() => {}
            _ = quiet => return,
        }
        if tokio::time::Instant::now() >= deadline {
            return;
        }
    }
}

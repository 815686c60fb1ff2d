//! The dedicated pair: two network namespaces ("hosts") joined by a veth, one `ztunnel` in
//! each in dedicated mode (`PROXY_MODE=dedicated`, config and CA from local files), the client
//! namespace's outbound TCP to the server's meshed addresses redirected to its ztunnel's 15001
//! by an nft rule that skips ztunnel's own marked sockets. The server namespace has three
//! addresses on one set of apps: one is a workload with protocol HBONE, one a workload without
//! HBONE (its client ztunnel relays plain TCP), one is not captured at all (direct).
//!
//! Everything is named after this process (`ambench-pair-<pid>-*`): a run that crashed leaves
//! names whose pid is dead, and the next run removes them ([`reap_stale`]). Namespaces,
//! processes and run directory go on every exit: [`PairLayout::down`], its `Drop` on an error
//! or panic, and [`on_signal_tear_down`] on Ctrl-C or SIGTERM.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lab::process::{self, ProcessRecord};
use lab::{cmd, netns};

use crate::path::BenchPath;
use crate::servers::{CONNECT_PORT, ECHO_PORT, SINK_PORT};
use crate::ztunnel::Ztunnel;

/// Prefix of every name a pair run creates (namespaces, run directory).
const PREFIX: &str = "ambench-pair-";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);
/// The server workload reached over HBONE.
const HBONE_IP: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 2);
/// The server workload without HBONE: its client ztunnel passes plain TCP through.
const TCP_IP: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 3);
/// Not a workload and not captured: the direct path.
const DIRECT_IP: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 4);
/// ztunnel's mark on its own sockets (`PACKET_MARK`, Istio's 1337) and the mask the rule reads.
const ZTUNNEL_MARK: &str = "0x539";
const MARK_MASK: &str = "0xfff";
/// ztunnel's outbound listener in dedicated mode.
const OUTBOUND_PORT: u16 = 15001;
const READY: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15021);
pub const STATS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15020);
/// Environment variable naming the ztunnel binary to run instead of the one beside amesh-bench.
const ZTUNNEL_ENV: &str = "AMESH_BENCH_ZTUNNEL";
const STARTUP: Duration = Duration::from_secs(20);

/// The running pair. Dropping it removes everything (see the module doc).
pub struct PairLayout {
    pub client_netns: String,
    pub server_netns: String,
    /// Config, CA and logs.
    pub dir: PathBuf,
    /// Client side first.
    pub ztunnels: Vec<Ztunnel>,
    children: Vec<(Child, ProcessRecord)>,
    /// Set by [`PairLayout::down`], so that `Drop` has nothing left to do.
    done: bool,
}

/// The three server paths of the pair.
pub struct PairPaths {
    pub direct: BenchPath,
    pub hbone: BenchPath,
    pub passthrough: BenchPath,
}

impl PairLayout {
    /// Creates both namespaces, the veth, the capture rule and the config, then starts the two
    /// ztunnels (client side first) and waits until both are ready. `workers` sets
    /// ZTUNNEL_WORKER_THREADS; None leaves ztunnel's default.
    pub fn up(workers: Option<usize>) -> anyhow::Result<PairLayout> {
        let me = std::process::id();
        let client_netns = format!("{PREFIX}{me}-client");
        let server_netns = format!("{PREFIX}{me}-server");
        let dir = run_dir(me);
        // From here on, whatever exists is removed by Drop if a step fails.
        let mut pair = PairLayout {
            client_netns,
            server_netns,
            dir,
            ztunnels: Vec::new(),
            children: Vec::new(),
            done: false,
        };
        pair.network()?;
        pair.write_config()?;
        // `AMESH_BENCH_ZTUNNEL` names another build (e.g. a copy of the previous one, to
        // compare two builds in alternating runs); by default the one beside amesh-bench.
        let binary = match std::env::var_os(ZTUNNEL_ENV) {
            Some(path) => PathBuf::from(path),
            None => std::env::current_exe()
                .context("cannot find the amesh-bench binary")?
                .with_file_name("ztunnel"),
        };
        if !binary.is_file() {
            bail!(
                "no ztunnel binary at {} ({ZTUNNEL_ENV} or beside amesh-bench): build it \
                 (scripts/bench.sh does)",
                binary.display()
            );
        }
        // One after the other: the first creates the shared local CA, the second loads it.
        for (side, netns, workload) in [
            ("client", pair.client_netns.clone(), "bench/client/client"),
            ("server", pair.server_netns.clone(), "bench/server/server"),
        ] {
            pair.start_ztunnel(&binary, side, &netns, workload, workers)?;
        }
        Ok(pair)
    }

    /// The three paths, all from the client namespace to apps in the server namespace.
    pub fn paths(&self) -> PairPaths {
        let path = |name, ip: Ipv4Addr| BenchPath {
            name,
            client_netns: self.client_netns.clone(),
            server_netns: self.server_netns.clone(),
            server_ip: ip.into(),
        };
        PairPaths {
            direct: path("direct", DIRECT_IP),
            hbone: path("hbone", HBONE_IP),
            passthrough: path("passthrough", TCP_IP),
        }
    }

    /// Stops the ztunnels, deletes both namespaces and the run directory.
    pub fn down(mut self) -> anyhow::Result<()> {
        self.done = true;
        self.stop_processes();
        tear_down(&[&self.client_netns, &self.server_netns], None)?;
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("removing {}", self.dir.display()))
    }

    fn network(&self) -> anyhow::Result<()> {
        let (c, s) = (&self.client_netns, &self.server_netns);
        netns::add(c)?;
        netns::add(s)?;
        // Created in the client namespace with its peer moved straight into the server's:
        // nothing appears in the host's namespace.
        cmd::ip_in(
            c,
            [
                "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", s,
            ],
        )?;
        cmd::ip_in(
            c,
            ["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "eth0"],
        )?;
        for ip in [HBONE_IP, TCP_IP, DIRECT_IP] {
            cmd::ip_in(s, ["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        }
        for ns in [c, s] {
            cmd::ip_in(ns, ["link", "set", "eth0", "up"])?;
            // Every path opens thousands of short connections to one address and port, and
            // each leaves a TIME_WAIT socket for a minute on the side that closes first (the
            // client, or a ztunnel relaying its close): let new connections reuse those, and
            // give them a wider port range than the default 28,000.
            netns::sysctl(ns, "net.ipv4.tcp_tw_reuse", "1")?;
            netns::sysctl(ns, "net.ipv4.ip_local_port_range", "16000 64999")?;
        }
        // The operator's capture on the client host: outbound TCP to the meshed addresses goes
        // to ztunnel's 15001, except ztunnel's own sockets (marked). The direct address is not
        // in the set.
        let rule = format!(
            "table ip ambench_pair {{\n  chain out {{\n    type nat hook output priority -100;\n    \
             meta mark & {MARK_MASK} != {ZTUNNEL_MARK} ip daddr {{ {HBONE_IP}, {TCP_IP} }} \
             tcp dport {{ {SINK_PORT}, {ECHO_PORT}, {CONNECT_PORT} }} redirect to :{OUTBOUND_PORT}\n  }}\n}}\n"
        );
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let file = self.dir.join("capture.nft");
        std::fs::write(&file, rule).with_context(|| format!("writing {}", file.display()))?;
        let file = file.to_string_lossy();
        cmd::run("ip", ["netns", "exec", c, "nft", "-f", &file])
            .context("installing the client's capture rule (is nft installed?)")?;
        Ok(())
    }

    fn write_config(&self) -> anyhow::Result<()> {
        // Two workloads on the server host: the same service account, one speaking HBONE and
        // one not. Unknown fields are errors in this file, so a typo fails the start.
        let config = format!(
            "workloads:\n\
             - {{name: client, namespace: bench, serviceAccount: client, workloadName: client, \
             workloadIps: [{CLIENT_IP}], protocol: HBONE, node: pair-client}}\n\
             - {{name: server, namespace: bench, serviceAccount: server, workloadName: server, \
             workloadIps: [{HBONE_IP}], protocol: HBONE, node: pair-server}}\n\
             - {{name: server-tcp, namespace: bench, serviceAccount: server, \
             workloadName: server-tcp, workloadIps: [{TCP_IP}], protocol: TCP, node: pair-server}}\n"
        );
        let file = self.dir.join("config.yaml");
        std::fs::write(&file, config).with_context(|| format!("writing {}", file.display()))
    }

    fn start_ztunnel(
        &mut self,
        binary: &Path,
        side: &str,
        netns_name: &str,
        workload: &str,
        workers: Option<usize>,
    ) -> anyhow::Result<()> {
        let mut cmd = Command::new(binary);
        cmd.env("PROXY_MODE", "dedicated")
            .env("PROXY_WORKLOAD_INFO", workload)
            .env("LOCAL_XDS_PATH", self.dir.join("config.yaml"))
            .env("LOCAL_CA_DIR", self.dir.join("ca"))
            .env("ADMIN_ADDR", "127.0.0.1:15000")
            .env("STATS_ADDR", STATS.to_string())
            .env("READINESS_ADDR", READY.to_string())
            .env(
                "RUST_LOG",
                std::env::var("AMESH_LAB_ZTUNNEL_LOG").unwrap_or_else(|_| "info".into()),
            )
            // A control plane from the caller's environment would contradict the local files.
            .env_remove("XDS_ADDRESS")
            .env_remove("CA_ADDRESS");
        match workers {
            Some(n) => cmd.env("ZTUNNEL_WORKER_THREADS", n.to_string()),
            None => cmd.env_remove("ZTUNNEL_WORKER_THREADS"),
        };
        let log = self.dir.join(format!("ztunnel-{side}.log"));
        let name = format!("ztunnel {side}");
        let (mut child, record) = process::spawn_in_netns(&name, netns_name, cmd, &log, None)?;
        let ports = [OUTBOUND_PORT, 15006, 15008, READY.port()];
        let listening = process::wait_listening(&mut child, &record, &ports, STARTUP);
        let pid = record.pid;
        self.children.push((child, record));
        listening?;
        lab::probe::HttpProbe {
            what: name,
            netns: netns_name.to_string(),
            addr: READY,
            path: "/healthz/ready".into(),
            timeout: STARTUP,
        }
        .wait()
        .with_context(|| format!("see {}", log.display()))?;
        self.ztunnels.push(Ztunnel {
            node: side.to_string(),
            pid,
        });
        Ok(())
    }

    /// SIGKILL, not SIGTERM: a ztunnel told to stop drains its open connections (the pool's
    /// idle HBONE connections too) for longer than a benchmark wants to wait, and there is
    /// nothing here left to drain.
    fn stop_processes(&mut self) {
        for (child, record) in &mut self.children {
            process::kill_and_wait(record);
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for PairLayout {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.stop_processes();
        // The run directory stays for its logs; the next run removes it.
        if let Err(e) = tear_down(&[&self.client_netns, &self.server_netns], None) {
            eprintln!("amesh-bench: removing the pair's namespaces: {e:#}");
        }
        eprintln!(
            "amesh-bench: the pair's ztunnel logs are in {}",
            self.dir.display()
        );
    }
}

fn run_dir(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("{PREFIX}{pid}"))
}

/// Kills whatever runs in the named namespaces, deletes them, and removes `dir` if given.
fn tear_down(namespaces: &[&str], dir: Option<&Path>) -> anyhow::Result<()> {
    let mut first = None;
    for ns in namespaces {
        process::kill_netns_processes(ns);
        if let Err(e) = netns::delete(ns) {
            first.get_or_insert(anyhow::Error::from(e));
        }
    }
    if let Some(dir) = dir.filter(|d| d.exists()) {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            first.get_or_insert(anyhow::anyhow!("removing {}: {e}", dir.display()));
        }
    }
    first.map_or(Ok(()), Err)
}

/// The pid a pair name was made for, if it is one of ours.
fn owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    rest.split('-').next()?.parse().ok()
}

/// Whether `pid` is a live amesh-bench (a pair run in progress, not a leftover).
fn is_live_bench(pid: u32) -> bool {
    // A binary rebuilt while it runs reads as "<name> (deleted)".
    let name = |p: PathBuf| {
        let n = p.file_name()?.to_string_lossy().into_owned();
        Some(n.trim_end_matches(" (deleted)").to_string())
    };
    let ours = std::env::current_exe().ok().and_then(name);
    let theirs = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(name);
    ours.is_some() && ours == theirs
}

/// Removes what crashed pair runs left: namespaces (and the ztunnels still in them) and run
/// directories whose owner is no longer a running amesh-bench. Returns what was removed.
pub fn reap_stale() -> Vec<String> {
    let mut removed = Vec::new();
    for ns in netns::list() {
        match owner(&ns) {
            Some(pid) if !is_live_bench(pid) => {
                if let Err(e) = tear_down(&[&ns], None) {
                    eprintln!("amesh-bench: removing stale namespace {ns}: {e:#}");
                }
                removed.push(ns);
            }
            _ => {}
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            match owner(&name) {
                Some(pid) if !is_live_bench(pid) => {
                    let _ = std::fs::remove_dir_all(e.path());
                    removed.push(e.path().display().to_string());
                }
                _ => {}
            }
        }
    }
    removed
}

/// Ctrl-C, SIGTERM or SIGHUP while the pair is up would leave its ztunnels running (they are
/// in sessions of their own) and its namespaces behind: block those signals in every thread
/// (call this before starting any) and have one thread wait for them, remove this run's
/// namespaces, processes and run directory, and exit.
pub fn on_signal_tear_down() -> anyhow::Result<()> {
    // SAFETY: sigset_t is plain data that sigemptyset initialises; pthread_sigmask only reads
    // the set we pass. Threads created after this inherit the mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            bail!(
                "blocking signals: {}",
                std::io::Error::from_raw_os_error(rc)
            );
        }
        set
    };
    let me = std::process::id();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: sigwait reads the set and writes the signal number into `sig`.
            while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
            eprintln!("amesh-bench: signal {sig}: removing the pair");
            let client = format!("{PREFIX}{me}-client");
            let server = format!("{PREFIX}{me}-server");
            let _ = tear_down(&[&client, &server], Some(&run_dir(me)));
            std::process::exit(128 + sig);
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Waits up to `within` for `f` to hold, polling.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_tell_their_owner() {
        assert_eq!(owner("ambench-pair-4242-client"), Some(4242));
        assert_eq!(owner("ambench-pair-17"), Some(17));
        assert_eq!(owner("ambench-pair-x-client"), None);
        // A lab's namespaces and anything else are never ours to reap.
        assert_eq!(owner("amesh-ab12-node1"), None);
        assert_eq!(owner("amt-ded-hbone-a-4242"), None);
    }

    #[test]
    fn a_dead_pid_is_not_a_live_bench() {
        // Pid 0 has no /proc entry; this process runs the very executable it compares with.
        assert!(!is_live_bench(0));
        assert!(is_live_bench(std::process::id()));
    }
}

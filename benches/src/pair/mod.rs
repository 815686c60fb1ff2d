//! `amesh-bench --layout pair`: ztunnel's own cost, without the lab's extra hops. Two
//! namespaces with one dedicated-mode ztunnel each ([`setup`]); the direct path, HBONE through
//! both ztunnels and plain-TCP passthrough through the client's, the ztunnels pinned to a core
//! each ([`pin`]) or placed by the scheduler, all measured in the same repetitions with the
//! lab layout's measurements ([`crate::bench::repeat`]); [`report`] puts them side by side.

pub mod pin;
pub mod report;
pub mod setup;

use anyhow::{bail, Context};

use crate::bench::{progress, repeat, Subject};
use crate::host::{load_average, machine};
use crate::path::BenchPath;
use crate::report::summarise;
use crate::servers::{Servers, ECHO_PORT};
use crate::settings::Settings;
use crate::ztunnel::{self, AFTER_RUN, SETTLE};
use report::{PairPath, PairReport};
use setup::PairLayout;

/// Less CPU time than this (a few 1/100 s ticks) gives no kernel share.
const MIN_SPLIT_SECS: f64 = 0.05;

/// CPU each side's ztunnel gets when pinned (the client's first, as the layout).
const PIN_CPUS: [usize; 2] = [0, 1];

pub fn run(settings: &Settings) -> anyhow::Result<PairReport> {
    setup::on_signal_tear_down()?;
    for gone in setup::reap_stale() {
        progress(&format!("removed {gone} (left by a crashed run)"));
    }
    let load_start = load_average();
    progress("bringing up the dedicated pair (two namespaces, one ztunnel each)");
    let pair = PairLayout::up(settings.workers)?;
    let all_cpus = pin::own_cpus()?;
    let pinned: Vec<usize> = PIN_CPUS
        .iter()
        .map(|c| all_cpus[c % all_cpus.len()])
        .collect();
    let ztunnels = pair.ztunnels.clone();
    std::thread::sleep(SETTLE);
    let rss_idle = ztunnel::rss_all(&ztunnels)?;

    let paths = pair.paths();
    let servers = Servers::start(&pair.server_netns)?;
    check_paths(&pair, ECHO_PORT)?;

    progress(&format!(
        "holding {} tunnelled connections open",
        settings.held_connections
    ));
    let held = ztunnel::held_rounds(&paths.hbone, &ztunnels, settings.held_connections, rss_idle)?;

    let pin = |cpus: Option<&[usize]>| -> anyhow::Result<()> {
        for (i, z) in ztunnels.iter().enumerate() {
            let set = cpus.map_or(&all_cpus[..], |c| &c[i..=i]);
            pin::set_affinity(z.pid, set)
                .with_context(|| format!("setting the CPUs of the {} ztunnel", z.node))?;
        }
        Ok(())
    };
    let subjects: Vec<(Subject, &'static str)> = vec![
        (with_pin(&pin, "direct", &paths.direct, None), "direct"),
        (with_pin(&pin, "hbone", &paths.hbone, None), "HBONE"),
        (
            with_pin(&pin, "hbone-pinned", &paths.hbone, Some(&pinned)),
            "HBONE, pinned",
        ),
        (
            with_pin(&pin, "passthrough", &paths.passthrough, None),
            "passthrough",
        ),
        (
            with_pin(
                &pin,
                "passthrough-pinned",
                &paths.passthrough,
                Some(&pinned),
            ),
            "passthrough, pinned",
        ),
    ];
    let (subjects, labels): (Vec<Subject>, Vec<&'static str>) = subjects.into_iter().unzip();
    let names: Vec<&'static str> = subjects.iter().map(|s| s.name).collect();
    let measured = repeat(settings, &subjects, &ztunnels);
    drop(subjects);
    pin(None)?;
    let measured = measured?;

    std::thread::sleep(AFTER_RUN);
    let memory_after = ztunnel::memory_all(&ztunnels)?;
    drop(servers);
    progress("tearing the pair down");
    pair.down()?;

    let sum = |prefix: &str| -> (Vec<f64>, u64) {
        let mut cpu = vec![0.0; ztunnels.len()];
        let mut bytes = 0;
        for (m, _) in measured
            .iter()
            .zip(&names)
            .filter(|(_, n)| n.starts_with(prefix))
        {
            for (acc, c) in cpu.iter_mut().zip(&m.cpu) {
                *acc += c;
            }
            bytes += m.bytes;
        }
        (cpu, bytes)
    };
    let (hbone_cpu, hbone_bytes) = sum("hbone");
    let ztunnel = ztunnel::costs(&ztunnels, &held, &memory_after, &hbone_cpu, hbone_bytes);
    let mut measured = measured.into_iter();
    let direct = measured.next().context("no direct path measured")?;
    // /proc/stat's busy time is the whole machine's, whatever CPUs the bench may use.
    let cpus = crate::busy::machine_cpus()?;
    let direct_gbit = crate::report::one_stream_gbit(&direct.runs);
    let pair_paths: Vec<PairPath> = measured
        .zip(names.iter().zip(&labels).skip(1))
        .map(|(m, (&name, &label))| PairPath {
            name,
            label,
            ztunnel_cpu_secs_per_gb: m.cpu.iter().map(|c| c / (m.bytes as f64 / 1e9)).collect(),
            ztunnel_kernel_share: m
                .cpu
                .iter()
                .zip(&m.cpu_system)
                // A few clock ticks say nothing about a split (the passthrough server's).
                .map(|(c, s)| (*c >= MIN_SPLIT_SECS).then(|| s / c))
                .collect(),
            machine: m.machine_cpu(cpus, true, direct_gbit),
            summary: summarise(&direct.runs, &m.runs),
            runs: m.runs,
        })
        .collect();
    let direct_machine = direct.machine_cpu(cpus, false, direct_gbit);
    let targets = report::targets(&pair_paths, &ztunnel);
    Ok(PairReport {
        layout: "pair",
        machine: machine(load_start),
        settings: settings.clone(),
        paths: pair_paths,
        ztunnel,
        hbone_throughput_bytes: hbone_bytes,
        direct_machine,
        targets,
        direct: direct.runs,
        notes: report::NOTES.to_vec(),
    })
}

/// A path whose ztunnels are pinned to `cpus` (one per ztunnel, in order) before each of its
/// measurements, or given every CPU back when None.
fn with_pin<'a>(
    pin: &'a dyn Fn(Option<&[usize]>) -> anyhow::Result<()>,
    name: &'static str,
    path: &'a BenchPath,
    cpus: Option<&'a [usize]>,
) -> Subject<'a> {
    Subject {
        name,
        path,
        prepare: Box::new(move || pin(cpus)),
    }
}

/// Echoes over every path, then checks with the ztunnels' own metrics that each path is what
/// it claims: HBONE arrived at the server's ztunnel with mutual TLS, passthrough left the
/// client's ztunnel and never reached the server's, and direct reached neither.
fn check_paths(pair: &PairLayout, echo_port: u16) -> anyhow::Result<()> {
    let paths = pair.paths();
    let metrics = |netns: &str| -> anyhow::Result<Vec<String>> {
        let body = lab::netns::run_in(netns, || lab::probe::http_get(setup::STATS, "/metrics"))?
            .map(|(_, body)| body)
            .with_context(|| format!("no answer from ztunnel metrics in {netns}"))?;
        Ok(body
            .lines()
            .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .map(str::to_string)
            .collect())
    };
    let client = || metrics(&pair.client_netns);
    let server = || metrics(&pair.server_netns);
    let has =
        |lines: &[String], want: &[&str]| lines.iter().any(|l| want.iter().all(|w| l.contains(w)));

    let before = (client()?, server()?);
    paths.direct.check_echo(echo_port)?;
    if (client()?, server()?) != before {
        bail!("the direct path reached a ztunnel: it is captured");
    }

    paths.hbone.check_echo(echo_port)?;
    let inbound = [
        "reporter=\"destination\"",
        "destination_workload=\"server\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    let arrived = setup::eventually(std::time::Duration::from_secs(2), || {
        server().is_ok_and(|l| has(&l, &inbound))
    });
    if !arrived {
        bail!(
            "the server's ztunnel reported no mutual TLS connection to the HBONE workload: \
             the hbone path is not tunnelled ({})",
            server()?.join("\n")
        );
    }

    paths.passthrough.check_echo(echo_port)?;
    let outbound = ["reporter=\"source\"", "destination_workload=\"server-tcp\""];
    let left = setup::eventually(std::time::Duration::from_secs(2), || {
        client().is_ok_and(|l| has(&l, &outbound))
    });
    if !left {
        bail!(
            "the client's ztunnel reported no connection to the workload without HBONE: the \
             passthrough path is not captured ({})",
            client()?.join("\n")
        );
    }
    if has(&server()?, &["destination_workload=\"server-tcp\""]) {
        bail!("the server's ztunnel saw the passthrough connection: it should go app to app");
    }
    Ok(())
}

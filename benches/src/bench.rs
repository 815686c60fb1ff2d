//! One lab benchmark run, in order: lab(s) up, idle ztunnel memory, load servers, a check that
//! the paths are what they claim, held connections, then every measurement repeated with the
//! paths interleaved (same minute, rotating which goes first), and the labs torn down. The
//! paths: direct and mesh in the first lab, and with a second capture mode to compare, the
//! mesh path of a second lab running beside it. The repetition loop ([`repeat`]) is shared
//! with the dedicated-pair layout ([`crate::pair`]).

use std::time::Duration;

use anyhow::Context;

use crate::fixture::{BenchLab, PathKind};
use crate::host::{load_average, machine};
use crate::path::BenchPath;
use crate::report::{self, MachineCpu, PathRuns, Report};
use crate::servers::{Servers, ECHO_PORT};
use crate::settings::Settings;
use crate::ztunnel::{self, Ztunnel, AFTER_RUN, SETTLE};
use crate::{busy, connrate, latency, throughput};

pub fn run(settings: &Settings) -> anyhow::Result<Report> {
    let load_start = load_average();
    progress("bringing up the lab (2 nodes, ztunnel per node)");
    let bench = BenchLab::up(settings)?;
    let ztunnels: Vec<Ztunnel> = bench
        .ztunnel_pids()?
        .into_iter()
        .map(|(node, pid)| Ztunnel { node, pid })
        .collect();
    std::thread::sleep(SETTLE);
    let rss_idle = ztunnel::rss_all(&ztunnels)?;

    let mut servers = vec![
        Servers::start(&bench.direct.server_netns)?,
        Servers::start(&bench.mesh.server_netns)?,
    ];
    bench.check_paths(ECHO_PORT)?;
    if let Some(compared) = &bench.compared {
        // Both, since the check below uses both paths of that lab.
        servers.push(Servers::start(&compared.direct.server_netns)?);
        servers.push(Servers::start(&compared.mesh.server_netns)?);
        compared
            .check_paths(ECHO_PORT)
            .context("the second lab's paths")?;
    }

    progress(&format!(
        "holding {} tunnelled connections open",
        settings.held_connections
    ));
    let held = ztunnel::held_rounds(&bench.mesh, &ztunnels, settings.held_connections, rss_idle)?;

    let kinds = bench.kinds();
    let subjects: Vec<Subject> = kinds
        .iter()
        .map(|&kind| Subject::plain(kind.name(), bench.path(kind)))
        .collect();
    let mut measured = repeat(settings, &subjects, &ztunnels)?;
    drop(subjects);

    std::thread::sleep(AFTER_RUN);
    let memory_after = ztunnel::memory_all(&ztunnels)?;
    drop(servers);
    progress("tearing the lab(s) down");
    let compared_capture = settings.compare_capture.clone();
    bench.down()?;

    let mut take = |kind: PathKind| {
        kinds
            .iter()
            .position(|&k| k == kind)
            .map(|i| std::mem::take(&mut measured[i]))
            .unwrap_or_default()
    };
    let (direct, mesh, compared) = (
        take(PathKind::Direct),
        take(PathKind::Mesh),
        take(PathKind::Compared),
    );
    let ztunnel = ztunnel::costs(&ztunnels, &held, &memory_after, &mesh.cpu, mesh.bytes);
    let summary = report::summarise(&direct.runs, &mesh.runs);
    let direct_gbit = report::one_stream_gbit(&direct.runs);
    let cpus = busy::machine_cpus()?;
    // The ztunnels measured are the first lab's: only its mesh path has a kernel-only bound.
    let machine_cpu = report::LabMachineCpu {
        direct: direct.machine_cpu(cpus, false, direct_gbit),
        mesh: mesh.machine_cpu(cpus, true, direct_gbit),
        compared: compared_capture
            .as_ref()
            .map(|_| compared.machine_cpu(cpus, false, direct_gbit)),
    };
    Ok(Report {
        machine: machine(load_start),
        settings: settings.clone(),
        summary,
        machine_cpu,
        summary_compared: compared_capture
            .as_ref()
            .map(|_| report::summarise(&direct.runs, &compared.runs)),
        compared_capture,
        ztunnel,
        mesh_throughput_bytes: mesh.bytes,
        direct: direct.runs,
        mesh: mesh.runs,
        compared: compared.runs,
        notes: report::NOTES.to_vec(),
    })
}

/// One path as a repetition sees it.
pub struct Subject<'a> {
    /// Its name in progress lines and errors.
    pub name: &'static str,
    pub path: &'a BenchPath,
    /// Runs before each measurement of this path: the pair layout pins or unpins the
    /// ztunnels here, so paths that differ only in that can be interleaved.
    pub prepare: Box<dyn Fn() -> anyhow::Result<()> + 'a>,
}

impl<'a> Subject<'a> {
    /// A path with nothing to prepare.
    pub fn plain(name: &'static str, path: &'a BenchPath) -> Subject<'a> {
        Subject {
            name,
            path,
            prepare: Box::new(|| Ok(())),
        }
    }
}

/// Everything measured on one path, and what the ztunnels spent during its throughput runs.
#[derive(Debug, Default)]
pub struct Measured {
    pub runs: PathRuns,
    /// CPU seconds of each ztunnel (in the order given) during this path's throughput runs.
    pub cpu: Vec<f64>,
    /// The part of `cpu` spent in the kernel (system time).
    pub cpu_system: Vec<f64>,
    /// CPU seconds the whole machine was busy during this path's throughput runs (every
    /// process and interrupt; see [`busy::machine_busy_secs`]).
    pub machine_busy: f64,
    /// Wall-clock seconds of this path's throughput runs.
    pub throughput_secs: f64,
    /// Bytes this path's throughput runs delivered.
    pub bytes: u64,
}

impl Measured {
    /// The whole machine during this path's throughput runs on `cpus` CPUs, against direct's
    /// 1-stream median `direct_gbit`; `ztunnel_user`: leave the ztunnels' user-space time out
    /// for the kernel-only ceiling (when the ztunnels measured are the ones this path used).
    pub fn machine_cpu(&self, cpus: usize, ztunnel_user: bool, direct_gbit: f64) -> MachineCpu {
        let user: f64 = self
            .cpu
            .iter()
            .zip(&self.cpu_system)
            .map(|(c, s)| c - s)
            .sum();
        MachineCpu::new(
            self.machine_busy,
            self.throughput_secs,
            self.bytes,
            cpus,
            ztunnel_user.then_some(user),
            direct_gbit,
        )
    }
}

/// Every repetition of every measurement on every subject, the subjects' order rotating by
/// one each repetition; results in the subjects' order.
pub fn repeat(
    settings: &Settings,
    subjects: &[Subject],
    ztunnels: &[Ztunnel],
) -> anyhow::Result<Vec<Measured>> {
    let mut measured: Vec<Measured> = subjects
        .iter()
        .map(|_| Measured {
            cpu: vec![0.0; ztunnels.len()],
            cpu_system: vec![0.0; ztunnels.len()],
            ..Measured::default()
        })
        .collect();
    for rep in 0..settings.repetitions {
        progress(&format!("repetition {}/{}", rep + 1, settings.repetitions));
        let mut order: Vec<usize> = (0..subjects.len()).collect();
        order.rotate_left(rep % subjects.len().max(1));
        measure_rep(settings, subjects, &order, ztunnels, &mut measured)?;
    }
    Ok(measured)
}

/// One repetition of every measurement, each on every subject in `order`.
fn measure_rep(
    s: &Settings,
    subjects: &[Subject],
    order: &[usize],
    ztunnels: &[Ztunnel],
    measured: &mut [Measured],
) -> anyhow::Result<()> {
    let prepare = |sub: &Subject| -> anyhow::Result<()> {
        (sub.prepare)().with_context(|| format!("preparing the {} path", sub.name))
    };
    for &i in order {
        let sub = &subjects[i];
        prepare(sub)?;
        let r = latency::run(
            sub.path,
            s.rr_size,
            s.rr_count,
            Duration::from_secs(s.rr_max_secs),
        )
        .with_context(|| format!("latency, {}", sub.name))?;
        progress(&format!(
            "  latency {:10}: p50 {:.0} µs, p99 {:.0} µs ({} exchanges)",
            sub.name, r.p50_us, r.p99_us, r.exchanges
        ));
        measured[i].runs.latency.push(r);
    }
    let max = Duration::from_secs(s.conn_max_secs);
    for (threads, total) in [(1, s.conn_serial), (s.conn_parallelism, s.conn_parallel)] {
        for &i in order {
            let sub = &subjects[i];
            prepare(sub)?;
            let r = connrate::run(sub.path, threads, total, max)
                .with_context(|| format!("connection rate, {}", sub.name))?;
            progress(&format!(
                "  connect {:10} x{threads}: {:.0}/s, setup p50 {:.0} µs ({} ok, {} failed)",
                sub.name, r.per_s, r.setup_p50_us, r.connections, r.errors
            ));
            let runs = &mut measured[i].runs;
            if threads == 1 {
                runs.connect_serial.push(r);
            } else {
                runs.connect_parallel.push(r);
            }
        }
    }
    for streams in [1, 4] {
        for &i in order {
            let sub = &subjects[i];
            prepare(sub)?;
            let cpu_before = ztunnel::cpu_split_all(ztunnels)?;
            let busy_before = busy::machine_busy_secs()?;
            let r = throughput::run(sub.path, streams, s.throughput_duration(), s.write_size)
                .with_context(|| format!("throughput, {} streams, {}", streams, sub.name))?;
            let busy_after = busy::machine_busy_secs()?;
            let cpu_after = ztunnel::cpu_split_all(ztunnels)?;
            progress(&format!(
                "  throughput {:10} x{streams}: {:.2} Gbit/s",
                sub.name, r.gbit_per_s
            ));
            let m = &mut measured[i];
            for (z, (a, b)) in cpu_after.iter().zip(&cpu_before).enumerate() {
                m.cpu[z] += a.total() - b.total();
                m.cpu_system[z] += a.system - b.system;
            }
            m.machine_busy += busy_after - busy_before;
            m.throughput_secs += r.secs;
            m.bytes += r.bytes;
            if streams == 1 {
                m.runs.throughput_1_stream.push(r);
            } else {
                m.runs.throughput_4_streams.push(r);
            }
        }
    }
    Ok(())
}

pub fn progress(msg: &str) {
    eprintln!("amesh-bench: {msg}");
}

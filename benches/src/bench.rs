//! One benchmark run, in order: lab(s) up, idle ztunnel memory, load servers, a check that the
//! paths are what they claim, held connections, then every measurement repeated with the
//! paths interleaved (same minute, rotating which goes first), and the labs torn down. The
//! paths: direct and mesh in the first lab, and with a second capture mode to compare, the
//! mesh path of a second lab running beside it.

use std::time::Duration;

use anyhow::Context;

use crate::fixture::{BenchLab, PathKind};
use crate::host::{load_average, machine};
use crate::report::{self, PathRuns, Report, ZtunnelCost};
use crate::servers::{Servers, ECHO_PORT};
use crate::settings::Settings;
use crate::ztunnel::{self, Ztunnel};
use crate::{connrate, latency, throughput};

/// Pause before reading memory, so that closed connections are gone and allocations settle.
const SETTLE: Duration = Duration::from_secs(1);
/// Pause between the last measurement and the after-the-run reading: ztunnel returns free heap
/// to the kernel once a second, and a throughput burst leaves megabytes of it, so a reading
/// within the first second saw either side of that release by chance.
const AFTER_RUN: Duration = Duration::from_secs(3);

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
        Servers::start(&bench.lab, &bench.direct.server)?,
        Servers::start(&bench.lab, &bench.mesh.server)?,
    ];
    bench.check_paths(ECHO_PORT)?;
    if let Some(compared) = &bench.compared {
        // Both, since the check below uses both paths of that lab.
        servers.push(Servers::start(&compared.lab, &compared.direct.server)?);
        servers.push(Servers::start(&compared.lab, &compared.mesh.server)?);
        compared
            .check_paths(ECHO_PORT)
            .context("the second lab's paths")?;
    }

    progress(&format!(
        "holding {} tunnelled connections open",
        settings.held_connections
    ));
    let rss_held = ztunnel::rss_with_held_connections(
        &bench.lab,
        &bench.mesh,
        &ztunnels,
        settings.held_connections,
        SETTLE,
    )?;
    // The first round also pays for what stays once it is over (the pool's HBONE connections,
    // grown tables); a second round on the same ztunnels shows what one more open connection
    // costs. Read after ztunnel has returned the first round's free heap.
    std::thread::sleep(AFTER_RUN);
    let rss_before_second = ztunnel::rss_all(&ztunnels)?;
    let rss_held_second = ztunnel::rss_with_held_connections(
        &bench.lab,
        &bench.mesh,
        &ztunnels,
        settings.held_connections,
        SETTLE,
    )
    .context("second round of held connections")?;

    let mut runs = Runs {
        mesh_cpu: vec![0.0; ztunnels.len()],
        ..Runs::default()
    };
    for rep in 0..settings.repetitions {
        progress(&format!("repetition {}/{}", rep + 1, settings.repetitions));
        let mut order = bench.kinds();
        let n = order.len();
        order.rotate_left(rep % n);
        measure_rep(&bench, settings, &ztunnels, &order, &mut runs)?;
    }

    std::thread::sleep(AFTER_RUN);
    let memory_after = ztunnel::memory_all(&ztunnels)?;
    drop(servers);
    progress("tearing the lab(s) down");
    let compared_capture = settings.compare_capture.clone();
    bench.down()?;

    let per_connection =
        |held: u64, before: u64| (held as f64 - before as f64) / settings.held_connections as f64;
    let ztunnel = ztunnels
        .iter()
        .enumerate()
        .map(|(i, z)| ZtunnelCost {
            node: z.node.clone(),
            pid: z.pid,
            rss_idle_kib: rss_idle[i],
            rss_held_kib: rss_held[i],
            rss_after_kib: memory_after[i].rss_kib,
            rss_after_anon_kib: memory_after[i].anon_kib,
            rss_after_file_kib: memory_after[i].file_kib,
            rss_peak_kib: memory_after[i].peak_kib,
            kib_per_connection: per_connection(rss_held[i], rss_idle[i]),
            kib_per_connection_second: per_connection(rss_held_second[i], rss_before_second[i]),
            throughput_cpu_secs: runs.mesh_cpu[i],
            cpu_secs_per_gb: runs.mesh_cpu[i] / (runs.mesh_bytes as f64 / 1e9),
        })
        .collect();
    Ok(Report {
        machine: machine(load_start),
        settings: settings.clone(),
        summary: report::summarise(&runs.direct, &runs.mesh),
        summary_compared: compared_capture
            .as_ref()
            .map(|_| report::summarise(&runs.direct, &runs.compared)),
        compared_capture,
        ztunnel,
        mesh_throughput_bytes: runs.mesh_bytes,
        direct: runs.direct,
        mesh: runs.mesh,
        compared: runs.compared,
        notes: report::NOTES.to_vec(),
    })
}

/// Everything measured so far.
#[derive(Default)]
struct Runs {
    direct: PathRuns,
    mesh: PathRuns,
    /// The second lab's mesh path.
    compared: PathRuns,
    /// CPU seconds per ztunnel (node order) during the mesh throughput runs.
    mesh_cpu: Vec<f64>,
    /// Bytes delivered by the mesh throughput runs.
    mesh_bytes: u64,
}

impl Runs {
    fn of(&mut self, kind: PathKind) -> &mut PathRuns {
        match kind {
            PathKind::Direct => &mut self.direct,
            PathKind::Mesh => &mut self.mesh,
            PathKind::Compared => &mut self.compared,
        }
    }
}

/// One repetition of every measurement, each on both paths in `order`.
fn measure_rep(
    bench: &BenchLab,
    s: &Settings,
    ztunnels: &[Ztunnel],
    order: &[PathKind],
    runs: &mut Runs,
) -> anyhow::Result<()> {
    for &kind in order {
        let lab = bench.lab_of(kind);
        let r = latency::run(
            lab,
            bench.path(kind),
            s.rr_size,
            s.rr_count,
            Duration::from_secs(s.rr_max_secs),
        )
        .with_context(|| format!("latency, {}", kind.name()))?;
        progress(&format!(
            "  latency {:6}: p50 {:.0} µs, p99 {:.0} µs ({} exchanges)",
            kind.name(),
            r.p50_us,
            r.p99_us,
            r.exchanges
        ));
        runs.of(kind).latency.push(r);
    }
    let max = Duration::from_secs(s.conn_max_secs);
    for (threads, total) in [(1, s.conn_serial), (s.conn_parallelism, s.conn_parallel)] {
        for &kind in order {
            let lab = bench.lab_of(kind);
            let r = connrate::run(lab, bench.path(kind), threads, total, max)
                .with_context(|| format!("connection rate, {}", kind.name()))?;
            progress(&format!(
                "  connect {:6} x{threads}: {:.0}/s, setup p50 {:.0} µs ({} ok, {} failed)",
                kind.name(),
                r.per_s,
                r.setup_p50_us,
                r.connections,
                r.errors
            ));
            let path = runs.of(kind);
            if threads == 1 {
                path.connect_serial.push(r);
            } else {
                path.connect_parallel.push(r);
            }
        }
    }
    for streams in [1, 4] {
        for &kind in order {
            let lab = bench.lab_of(kind);
            let cpu_before = ztunnel::cpu_all(ztunnels)?;
            let r = throughput::run(
                lab,
                bench.path(kind),
                streams,
                s.throughput_duration(),
                s.write_size,
            )
            .with_context(|| format!("throughput, {} streams, {}", streams, kind.name()))?;
            let cpu_after = ztunnel::cpu_all(ztunnels)?;
            progress(&format!(
                "  throughput {:6} x{streams}: {:.2} Gbit/s",
                kind.name(),
                r.gbit_per_s
            ));
            if kind == PathKind::Mesh {
                for (acc, (a, b)) in runs
                    .mesh_cpu
                    .iter_mut()
                    .zip(cpu_after.iter().zip(&cpu_before))
                {
                    *acc += a - b;
                }
                runs.mesh_bytes += r.bytes;
            }
            let path = runs.of(kind);
            if streams == 1 {
                path.throughput_1_stream.push(r);
            } else {
                path.throughput_4_streams.push(r);
            }
        }
    }
    Ok(())
}

fn progress(msg: &str) {
    eprintln!("amesh-bench: {msg}");
}

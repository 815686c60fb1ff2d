//! The readable summary `amesh-lab up` and `status` print.

use std::fmt::Write;

use crate::plan::AddressPlan;
use crate::process;
use crate::state::LabState;

/// A multi-line description of a lab: nodes, pods with IP and node, services with VIPs.
pub fn render(state: &LabState, alive: bool) -> String {
    let mut out = String::new();
    let range = AddressPlan::new(state.index)
        .map(|p| p.lab_cidr().to_string())
        .unwrap_or_default();
    let how = match (alive, state.detached) {
        (false, _) => "STALE (its owner is gone; the next `up` or `down --all` removes it)",
        (true, true) => "running (detached)",
        (true, false) => "running (owned by a process)",
    };
    // Writing to a String cannot fail.
    let _ = writeln!(out, "lab {}  {range}  {how}", state.id);
    let _ = writeln!(out, "  run dir   {}", state.run_dir.display());
    let _ = writeln!(out, "  manifests {}", state.manifests_dir.display());
    let _ = writeln!(out, "  root netns {} ({})", state.root_netns, state.root_ip);
    let nodes: Vec<Vec<String>> = state
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.ip.to_string(),
                n.pod_cidr.to_string(),
                n.netns.clone(),
            ]
        })
        .collect();
    table(
        &mut out,
        "nodes",
        &["NODE", "IP", "POD CIDR", "NETNS"],
        &nodes,
    );
    let pods: Vec<Vec<String>> = state
        .pods
        .iter()
        .map(|p| {
            // A waypoint's pod runs `waypoint`, the others the echo app; the newest record
            // is the one that counts after a restart.
            let name = match state.waypoints.iter().find(|w| w.runs_in(p)) {
                Some(w) => crate::waypoints::process_name(&w.namespace, &w.gateway),
                None => format!("echo {}", p.key()),
            };
            let app = state.processes.iter().rev().find(|r| r.name == name);
            let up = match app {
                Some(r) if process::is_alive(r) => "up",
                Some(_) => "DOWN",
                None => "-",
            };
            let ports: Vec<String> = p.ports.iter().map(u16::to_string).collect();
            vec![
                p.namespace.clone(),
                p.name.clone(),
                p.ip.to_string(),
                p.node.clone(),
                ports.join(","),
                up.to_string(),
            ]
        })
        .collect();
    table(
        &mut out,
        "pods",
        &["NAMESPACE", "NAME", "IP", "NODE", "PORTS", "APP"],
        &pods,
    );
    let services: Vec<Vec<String>> = state
        .services
        .iter()
        .map(|s| {
            let ports: Vec<String> = s
                .ports
                .iter()
                .map(|p| format!("{}->{}", p.port, p.target_port))
                .collect();
            vec![
                s.namespace.clone(),
                s.name.clone(),
                s.vip.map_or("None".to_string(), |v| v.to_string()),
                ports.join(","),
            ]
        })
        .collect();
    table(
        &mut out,
        "services",
        &["NAMESPACE", "NAME", "VIP", "PORTS"],
        &services,
    );
    out
}

fn table(out: &mut String, title: &str, header: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "  {title}:");
    if rows.is_empty() {
        let _ = writeln!(out, "    (none)");
        return;
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::from("    ");
        for (cell, w) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<w$}  ");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

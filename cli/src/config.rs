//! `amesh config workloads|services|policies|certificates`: what a ztunnel holds, read from its
//! `/config_dump` (Istio ztunnel's shape, see ztunnel/src/dump.rs) and printed as the tables
//! `istioctl ztunnel-config` prints, or as the dump's own entries (`-o json|yaml`).
//!
//! Every ztunnel receives the whole mesh's workloads, services and policies, so those three
//! are read from one ztunnel (`--node`, else the first node's); certificates are per node (the
//! identities of the pods on it), so without `--node` every node's are listed with a NODE
//! column.

use std::fmt::Write as _;

use anyhow::{anyhow, Context};
use serde_json::Value;

use crate::args::{ConfigArgs, ConfigKind, Output, TargetArgs};
use crate::target::{Component, Target};

pub async fn run(target: &TargetArgs, args: ConfigArgs) -> anyhow::Result<()> {
    let target = Target::open(target).await?;
    let ztunnels = match (&args.node, args.kind) {
        (Some(node), _) => vec![target.ztunnel(Some(node)).await?],
        (None, ConfigKind::Certificates) => target.ztunnels().await?,
        (None, _) => vec![target.ztunnel(None).await?],
    };
    if ztunnels.is_empty() {
        anyhow::bail!("no ztunnel runs in {}", target.describe());
    }
    let mut dumps = Vec::new();
    for z in &ztunnels {
        dumps.push((z.clone(), read_dump(&target, z).await?));
    }
    // A NODE column only when more than one ztunnel answered for one table.
    let per_node = args.node.is_none() && args.kind == ConfigKind::Certificates;
    let out = render(args.kind, args.output, &dumps, per_node)?;
    print!("{out}");
    Ok(())
}

/// A ztunnel's `/config_dump` (admin port in a lab, read-only on the stats port on a cluster).
pub async fn read_dump(target: &Target, z: &Component) -> anyhow::Result<Value> {
    let dump = target
        .get_json(z, target.config_dump_port(), "/config_dump")
        .await?;
    if !dump.is_object() {
        anyhow::bail!(
            "the /config_dump of {} {} is not a JSON object",
            z.kind,
            z.key()
        );
    }
    Ok(dump)
}

/// The output of one `amesh config` run over the dumps read (node, dump).
pub fn render(
    kind: ConfigKind,
    output: Output,
    dumps: &[(Component, Value)],
    per_node: bool,
) -> anyhow::Result<String> {
    let (_, first) = dumps.first().ok_or_else(|| anyhow!("no dump to show"))?;
    let entries: Vec<Value> = match kind {
        ConfigKind::Workloads => sorted(list(first, "workloads")?, &["namespace", "name", "node"]),
        ConfigKind::Services => {
            sorted(list(first, "services")?, &["namespace", "name", "hostname"])
        }
        ConfigKind::Policies => sorted(list(first, "policies")?, &["namespace", "name"]),
        ConfigKind::Certificates => {
            let mut all = Vec::new();
            for (z, dump) in dumps {
                for mut c in list(dump, "certificates")? {
                    if per_node {
                        if let Some(obj) = c.as_object_mut() {
                            obj.insert("node".into(), z.node.clone().unwrap_or_default().into());
                        }
                    }
                    all.push(c);
                }
            }
            all
        }
    };
    match output {
        Output::Json => Ok(serde_json::to_string_pretty(&entries)? + "\n"),
        Output::Yaml => Ok(serde_yaml::to_string(&entries)?),
        Output::Table => {
            let services = list(first, "services")?;
            let rows = match kind {
                ConfigKind::Workloads => workload_rows(&entries, &services),
                ConfigKind::Services => service_rows(&entries, &services),
                ConfigKind::Policies => policy_rows(&entries),
                ConfigKind::Certificates => {
                    certificate_rows(&entries, per_node, time::OffsetDateTime::now_utc())
                }
            };
            Ok(table(&rows))
        }
    }
}

/// The array `key` of a dump; an error naming the key when it is missing or not an array.
fn list(dump: &Value, key: &str) -> anyhow::Result<Vec<Value>> {
    dump.get(key)
        .and_then(Value::as_array)
        .cloned()
        .with_context(|| format!("the ztunnel's /config_dump has no {key:?} list"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// Sorted by the string fields `keys`, in order (istioctl's orders).
fn sorted(mut entries: Vec<Value>, keys: &[&str]) -> Vec<Value> {
    entries.sort_by(|a, b| {
        keys.iter()
            .map(|k| str_of(a, k).cmp(str_of(b, k)))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    entries
}

/// An address as the dump writes it, `network/ip`, without the network.
fn strip_network(addr: &str) -> &str {
    addr.split_once('/').map_or(addr, |(_, ip)| ip)
}

/// The name of the waypoint an entry uses: its `waypoint.destination` (`ns/hostname` or
/// `network/ip`) looked up among the services; `None` without one, as istioctl prints.
fn waypoint_name(entry: &Value, services: &[Value]) -> String {
    let Some(dest) = entry
        .pointer("/waypoint/destination")
        .and_then(Value::as_str)
    else {
        return "None".into();
    };
    let found = services.iter().find(|s| {
        format!("{}/{}", str_of(s, "namespace"), str_of(s, "hostname")) == dest
            || (s
                .get("vips")
                .and_then(Value::as_array)
                .into_iter()
                .flatten())
            .any(|v| v.as_str() == Some(dest))
    });
    match found {
        Some(s) => str_of(s, "name").to_string(),
        // A waypoint the ztunnel does not know as a service (yet): show where it points.
        None => dest.to_string(),
    }
}

type Rows = Vec<Vec<String>>;

fn header(cols: &[&str]) -> Vec<String> {
    cols.iter().map(|c| c.to_string()).collect()
}

/// istioctl's workload columns (NAMESPACE NAME IP NODE) plus its verbose WAYPOINT and PROTOCOL.
fn workload_rows(workloads: &[Value], services: &[Value]) -> Rows {
    let mut rows = vec![header(&[
        "NAMESPACE",
        "NAME",
        "IP",
        "NODE",
        "WAYPOINT",
        "PROTOCOL",
    ])];
    for w in workloads {
        let ip = w
            .pointer("/workloadIps/0")
            .and_then(Value::as_str)
            .unwrap_or_default();
        rows.push(vec![
            str_of(w, "namespace").into(),
            str_of(w, "name").into(),
            ip.into(),
            str_of(w, "node").into(),
            waypoint_name(w, services),
            str_of(w, "protocol").into(),
        ]);
    }
    rows
}

/// istioctl's service columns: NAMESPACE, SERVICE NAME, SERVICE VIP (the first), WAYPOINT;
/// plus ENDPOINTS, how many workloads back it.
fn service_rows(entries: &[Value], services: &[Value]) -> Rows {
    let mut rows = vec![header(&[
        "NAMESPACE",
        "SERVICE NAME",
        "SERVICE VIP",
        "WAYPOINT",
        "ENDPOINTS",
    ])];
    for s in entries {
        let vip = s
            .pointer("/vips/0")
            .and_then(Value::as_str)
            .map(strip_network)
            .unwrap_or_default();
        let endpoints = s
            .get("endpoints")
            .and_then(Value::as_object)
            .map_or(0, |e| e.len());
        rows.push(vec![
            str_of(s, "namespace").into(),
            str_of(s, "name").into(),
            vip.into(),
            waypoint_name(s, services),
            endpoints.to_string(),
        ]);
    }
    rows
}

/// istioctl's policy columns.
fn policy_rows(policies: &[Value]) -> Rows {
    let mut rows = vec![header(&["NAMESPACE", "NAME", "ACTION", "SCOPE"])];
    for p in policies {
        rows.push(vec![
            str_of(p, "namespace").into(),
            str_of(p, "name").into(),
            str_of(p, "action").into(),
            str_of(p, "scope").into(),
        ]);
    }
    rows
}

/// istioctl's certificate columns, one row per certificate of each identity's chain (TYPE
/// `Leaf` for the first, which istioctl labels `CA`, then `Cert Chain`) and of its roots
/// (`Root`); the serial number in hex as istioctl prints it.
fn certificate_rows(certs: &[Value], per_node: bool, now: time::OffsetDateTime) -> Rows {
    let mut cols = vec![
        "NAME",
        "TYPE",
        "STATUS",
        "VALID CERT",
        "SERIAL NUMBER",
        "NOT AFTER",
        "NOT BEFORE",
    ];
    if per_node {
        cols.insert(0, "NODE");
    }
    let mut rows = vec![header(&cols)];
    for c in certs {
        let identity = str_of(c, "identity");
        let state = str_of(c, "state");
        // istioctl shortens `Unavailable: <reason>` to `Unavailable`.
        let state = if state.contains("Unavailable") {
            "Unavailable"
        } else {
            state
        };
        let chain = c.get("certChain").and_then(Value::as_array);
        let roots = c.get("rootCerts").and_then(Value::as_array);
        let mut push = |kind: &str, cert: Option<&Value>| {
            let mut row = Vec::new();
            if per_node {
                row.push(str_of(c, "node").to_string());
            }
            let field = |k: &str| {
                cert.map(|v| str_of(v, k))
                    .filter(|s| !s.is_empty())
                    .unwrap_or("NA")
                    .to_string()
            };
            row.extend([
                identity.to_string(),
                kind.to_string(),
                state.to_string(),
                cert.is_some_and(|v| valid_now(v, now)).to_string(),
                cert.map(|v| decimal_to_hex(str_of(v, "serialNumber")))
                    .unwrap_or_else(|| "NA".into()),
                field("expirationTime"),
                field("validFrom"),
            ]);
            rows.push(row);
        };
        match chain.filter(|c| !c.is_empty()) {
            None => push("NA", None),
            Some(chain) => {
                for (i, cert) in chain.iter().enumerate() {
                    push(if i == 0 { "Leaf" } else { "Cert Chain" }, Some(cert));
                }
            }
        }
        for root in roots.into_iter().flatten() {
            push("Root", Some(root));
        }
    }
    rows
}

/// A certificate's `validFrom` ≤ `now` < `expirationTime` (RFC 3339); false when either
/// cannot be read.
pub fn valid_now(cert: &Value, now: time::OffsetDateTime) -> bool {
    match (
        parse_time(str_of(cert, "validFrom")),
        parse_time(str_of(cert, "expirationTime")),
    ) {
        (Some(from), Some(to)) => from <= now && now < to,
        _ => false,
    }
}

/// An RFC 3339 time, or `None`.
pub fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// A decimal serial number (any length: X.509 serials reach 160 bits) in lowercase hex; the
/// input unchanged when it is not decimal.
pub fn decimal_to_hex(decimal: &str) -> String {
    if decimal.is_empty() || !decimal.bytes().all(|b| b.is_ascii_digit()) {
        return decimal.to_string();
    }
    // Long division by 16 on the decimal digits, collecting remainders.
    let mut digits: Vec<u32> = decimal.bytes().map(|b| u32::from(b - b'0')).collect();
    let mut hex = Vec::new();
    while digits.iter().any(|&d| d != 0) {
        let mut rem = 0;
        let mut next = Vec::with_capacity(digits.len());
        for d in &digits {
            let cur = rem * 10 + d;
            next.push(cur / 16);
            rem = cur % 16;
        }
        hex.push(char::from_digit(rem, 16).unwrap_or('?'));
        let first = next.iter().position(|&d| d != 0).unwrap_or(next.len());
        digits = next.split_off(first);
    }
    if hex.is_empty() {
        return "0".into();
    }
    hex.iter().rev().collect()
}

/// Rows as columns padded to their widest cell, separated by three spaces (the first row is
/// the header).
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}   ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_in_hex() {
        assert_eq!(decimal_to_hex("255"), "ff");
        assert_eq!(decimal_to_hex("0"), "0");
        // 2^128 + 1: beyond u128.
        assert_eq!(
            decimal_to_hex("340282366920938463463374607431768211457"),
            "100000000000000000000000000000001"
        );
        assert_eq!(decimal_to_hex("<bad>"), "<bad>");
    }

    #[test]
    fn validity_window() {
        let cert = serde_json::json!({
            "validFrom": "2026-01-01T00:00:00Z",
            "expirationTime": "2026-01-02T00:00:00Z",
        });
        let at = |s| parse_time(s).unwrap();
        assert!(valid_now(&cert, at("2026-01-01T12:00:00Z")));
        assert!(!valid_now(&cert, at("2026-01-02T00:00:00Z")));
        assert!(!valid_now(&cert, at("2025-12-31T23:59:59Z")));
        assert!(!valid_now(
            &serde_json::json!({}),
            at("2026-01-01T12:00:00Z")
        ));
    }

    #[test]
    fn columns_line_up() {
        let rows = vec![
            vec!["A".to_string(), "LONG".into(), "X".into()],
            vec!["aaaa".to_string(), "b".into(), "c".into()],
        ];
        assert_eq!(table(&rows), "A      LONG   X\naaaa   b      c\n");
    }

    #[test]
    fn waypoint_by_hostname_or_address() {
        let services = vec![serde_json::json!({
            "namespace": "ns", "name": "wp", "hostname": "wp.ns.svc.cluster.local",
            "vips": ["/10.0.0.9"],
        })];
        let by_host =
            serde_json::json!({"waypoint": {"destination": "ns/wp.ns.svc.cluster.local"}});
        let by_ip = serde_json::json!({"waypoint": {"destination": "/10.0.0.9"}});
        assert_eq!(waypoint_name(&by_host, &services), "wp");
        assert_eq!(waypoint_name(&by_ip, &services), "wp");
        assert_eq!(waypoint_name(&serde_json::json!({}), &services), "None");
    }
}

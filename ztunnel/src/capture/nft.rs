//! nftables capture inside the pod's netns, with the behaviour of Istio's in-pod rules:
//!
//! - outbound TCP not marked by ztunnel and not to 127.0.0.1 → 15001;
//! - DNS (UDP and TCP 53) not marked → 15053;
//! - inbound TCP to the pod, not to 15008 and not marked → 15006;
//! - loopback traffic, kubelet probes (from 169.254.7.127) and replies to them pass untouched;
//! - packets of ztunnel's marked sockets (0x539) set connmark 0x111; output restores it as the
//!   packet mark, and `fwmark 0x111/0xfff → table 100 (local 0.0.0.0/0 dev lo)` delivers the
//!   app's replies to a spoofed client address back to ztunnel's transparent socket.
//!
//! Only IPv4 is redirected: ztunnel's in-pod listeners are IPv4, and a family nobody listens
//! for must pass untouched rather than be redirected into nothing (a dual-stack pod's IPv6
//! traffic flows as it would without the mesh).
//!
//! Everything lives in one table (`inet amesh`) replaced atomically, so re-installing after a
//! ztunnel restart is idempotent and never leaves the pod half-captured.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use futures::future::BoxFuture;

use super::{Capture, CaptureError, ListenerFds, PodNetns};
use crate::sockets::ports;

/// Connmark that marks connections made by ztunnel's sockets.
pub const CONNMARK: u32 = 0x111;
/// Routing table for replies to spoofed sources.
pub const ROUTE_TABLE: u32 = 100;
/// Source address of kubelet probes (SNATed by the CNI).
pub const PROBE_SOURCE: &str = "169.254.7.127";
const MASK: u32 = 0xfff;
const TABLE: &str = "amesh";

/// The whole ruleset, as one nft transaction; without `dns`, DNS is left to the outbound
/// rules (TCP) or untouched (UDP).
pub fn ruleset(mark: u32, dns: bool) -> String {
    let mark = mark & MASK;
    let dns_rules = if dns {
        format!(
            "meta nfproto ipv4 udp dport 53 redirect to :{port}\n    ip daddr != 127.0.0.1 tcp dport 53 redirect to :{port}\n    ",
            port = ports::DNS
        )
    } else {
        String::new()
    };
    format!(
        r#"table inet {TABLE} {{}}
delete table inet {TABLE}
table inet {TABLE} {{
  chain mangle_prerouting {{
    type filter hook prerouting priority mangle; policy accept;
    meta mark & {MASK:#x} == {mark:#x} ct mark set ct mark & 0xfffff000 | {CONNMARK:#x}
  }}
  chain mangle_output {{
    type route hook output priority mangle; policy accept;
    ct mark & {MASK:#x} == {CONNMARK:#x} meta mark set ct mark
  }}
  chain nat_prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    ip saddr {PROBE_SOURCE} meta l4proto tcp return
    meta mark & {MASK:#x} == {mark:#x} return
    meta l4proto tcp ip daddr != 127.0.0.1 tcp dport != {hbone} redirect to :{inbound}
  }}
  chain nat_output {{
    type nat hook output priority -100; policy accept;
    ip daddr {PROBE_SOURCE} meta l4proto tcp return
    meta mark & {MASK:#x} == {mark:#x} return
    ct mark & {MASK:#x} == {CONNMARK:#x} return
    {dns_rules}oifname "lo" return
    meta l4proto tcp ip daddr != 127.0.0.1 redirect to :{outbound}
  }}
}}
"#,
        hbone = ports::HBONE,
        inbound = ports::INBOUND_PLAIN,
        outbound = ports::OUTBOUND,
    )
}

async fn run(
    pod: &PodNetns,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, CaptureError> {
    let netns_arg = format!("--net={}", pod.netns.display());
    let command = format!("{program} {}", args.join(" "));
    let mut cmd = Command::new("nsenter");
    cmd.arg(&netns_arg)
        .arg(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| CaptureError::Spawn {
        command: command.clone(),
        source,
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|source| CaptureError::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| CaptureError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CaptureError::Command {
            command,
            netns: pod.netns.clone(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn exists(e: &CaptureError) -> bool {
    matches!(e, CaptureError::Command { stderr, .. } if stderr.contains("File exists"))
}

fn missing(e: &CaptureError) -> bool {
    matches!(e, CaptureError::Command { stderr, .. }
        if stderr.contains("No such file") || stderr.contains("No such process") || stderr.contains("does not exist"))
}

/// The nftables backend.
#[derive(Debug)]
pub struct NftCapture;

impl Capture for NftCapture {
    fn install<'a>(
        &'a self,
        pod: &'a PodNetns,
        _: &'a ListenerFds,
    ) -> BoxFuture<'a, Result<(), CaptureError>> {
        Box::pin(install(pod))
    }

    fn remove<'a>(&'a self, pod: &'a PodNetns) -> BoxFuture<'a, Result<(), CaptureError>> {
        Box::pin(remove(pod))
    }

    fn mode(&self) -> &'static str {
        "nft"
    }
}

/// Installs (or re-installs) capture in the pod's netns.
pub async fn install(pod: &PodNetns) -> Result<(), CaptureError> {
    let fwmark = format!("{CONNMARK:#x}/{MASK:#x}");
    let table = ROUTE_TABLE.to_string();
    for family in ["-4", "-6"] {
        let rule = run(
            pod,
            "ip",
            &[
                family, "rule", "add", "fwmark", &fwmark, "pref", "32764", "lookup", &table,
            ],
            None,
        )
        .await;
        match rule {
            Err(e) if !exists(&e) => return Err(e),
            _ => {}
        }
        let any = if family == "-4" { "0.0.0.0/0" } else { "::/0" };
        run(
            pod,
            "ip",
            &[
                family, "route", "replace", "local", any, "dev", "lo", "table", &table,
            ],
            None,
        )
        .await?;
    }
    run(pod, "nft", &["-f", "-"], Some(&ruleset(pod.mark, pod.dns))).await?;
    Ok(())
}

/// Removes capture; a netns that is already gone counts as removed. Every step is tried even
/// when an earlier one fails (this also rolls back a half-done install), and the first error is
/// returned.
pub async fn remove(pod: &PodNetns) -> Result<(), CaptureError> {
    if !pod.netns.exists() {
        return Ok(());
    }
    let fwmark = format!("{CONNMARK:#x}/{MASK:#x}");
    let table = ROUTE_TABLE.to_string();
    let script = format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n");
    let mut first_error = None;
    let mut keep = |r: Result<String, CaptureError>| {
        if let Err(e) = r {
            if !missing(&e) && first_error.is_none() {
                first_error = Some(e);
            }
        }
    };
    keep(run(pod, "nft", &["-f", "-"], Some(&script)).await);
    for family in ["-4", "-6"] {
        let rule = [
            family, "rule", "del", "fwmark", &fwmark, "pref", "32764", "lookup", &table,
        ];
        keep(run(pod, "ip", &rule, None).await);
        keep(
            run(
                pod,
                "ip",
                &[family, "route", "flush", "table", &table],
                None,
            )
            .await,
        );
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_names_istio_ports_and_marks() {
        let r = ruleset(0x539, true);
        assert!(r.contains("redirect to :15001"));
        assert!(r.contains("redirect to :15006"));
        assert!(r.contains("redirect to :15053"));
        assert!(r.contains("tcp dport != 15008"));
        assert!(r.contains("meta mark & 0xfff == 0x539"));
        assert!(r.contains("ct mark set ct mark & 0xfffff000 | 0x111"));
        assert!(r.contains("ip saddr 169.254.7.127"));
        // IPv4 only: nothing redirects IPv6 into listeners that are not there.
        assert!(!r.contains("ip6 daddr"), "{r}");
    }

    #[test]
    fn without_the_dns_proxy_dns_is_not_redirected_to_it() {
        let r = ruleset(0x539, false);
        assert!(!r.contains("dport 53"), "{r}");
        assert!(!r.contains(":15053"), "{r}");
        assert!(r.contains("redirect to :15001"));
    }
}

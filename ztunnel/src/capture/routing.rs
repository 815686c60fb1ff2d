//! Policy routing of the eBPF capture, set through rtnetlink inside the pod's netns. It makes
//! the pod's outbound TCP and DNS *local*, so the kernel runs its socket lookup (and with it
//! the sk_lookup program) instead of sending the packets out:
//!
//! ```text
//! 32750: to 169.254.7.127 lookup main                  replies to kubelet probes leave as usual
//! 32751: fwmark 0x539/0xfff lookup main                ztunnel's own sockets are exempt
//! 32752: iif lo ipproto tcp lookup 101                 the pod's TCP
//! 32753: iif lo ipproto udp dport 53 lookup 101        the pod's DNS queries
//! table 101: local 0.0.0.0/0 dev lo src <pod IP>
//! ```
//!
//! `iif lo` limits the rules to packets sent inside the pod: a packet arriving from the network
//! for some other address is not made local. `src <pod IP>` is what lets `connect()` pick the
//! pod's address as source (without it the kernel picks the destination, which is not a
//! configured address, and fails with ENETUNREACH). TCP the app sends to itself or to 127/8
//! never gets here: the `local` table (priority 0) matches first. The app's replies to
//! ztunnel's spoofed-source connections are TCP too, so they come back locally to ztunnel's
//! socket, which is why this mode needs no connmark.
//!
//! Rule and route changes are idempotent: install adds what is missing and deletes rules of
//! ours that are not wanted (an older ztunnel's), so a restart never duplicates them.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;

use futures::TryStreamExt;
use netlink_packet_route::route::{RouteAttribute, RouteScope, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange};
use netlink_packet_route::IpProtocol;
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use super::{CaptureError, PodNetns};

/// Routing table whose default is `local … dev lo`.
pub const TABLE: u32 = 101;
/// Priorities of our rules: after the `local` table (0), before `main` (32766).
pub const PRIORITIES: std::ops::RangeInclusive<u32> = 32750..=32753;
const MARK_MASK: u32 = 0xfff;
const LOOPBACK: &str = "lo";
/// `ip rule` table id of `main`.
const MAIN: u32 = 254;

/// One rule, in the terms we compare rules by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub priority: u32,
    pub table: u32,
    pub to: Option<Ipv4Addr>,
    pub fwmark: Option<u32>,
    pub iif_lo: bool,
    pub ipproto: Option<IpProtocol>,
    pub dport: Option<u16>,
}

/// The rules for a node whose ztunnel marks its sockets with `mark`.
/// The rules of a pod; without `dns`, DNS over UDP is not made local (nothing would take it).
pub fn rules(mark: u32, probe_source: Ipv4Addr, dns: bool) -> Vec<Rule> {
    let base = Rule {
        priority: 0,
        table: MAIN,
        to: None,
        fwmark: None,
        iif_lo: false,
        ipproto: None,
        dport: None,
    };
    let mut rules = vec![
        Rule {
            priority: *PRIORITIES.start(),
            to: Some(probe_source),
            ..base.clone()
        },
        Rule {
            priority: PRIORITIES.start() + 1,
            fwmark: Some(mark & MARK_MASK),
            ..base.clone()
        },
        Rule {
            priority: PRIORITIES.start() + 2,
            table: TABLE,
            iif_lo: true,
            ipproto: Some(IpProtocol::Tcp),
            ..base.clone()
        },
        Rule {
            priority: PRIORITIES.start() + 3,
            table: TABLE,
            iif_lo: true,
            ipproto: Some(IpProtocol::Udp),
            dport: Some(53),
            ..base
        },
    ];
    if !dns {
        rules.pop();
    }
    rules
}

impl Rule {
    /// Reads a rule the kernel listed; `None` for IPv6 or unreadable ones.
    fn from_message(m: &RuleMessage) -> Option<Rule> {
        let mut r = Rule {
            priority: 0,
            table: u32::from(m.header.table),
            to: None,
            fwmark: None,
            iif_lo: false,
            ipproto: None,
            dport: None,
        };
        for a in &m.attributes {
            match a {
                RuleAttribute::Priority(p) => r.priority = *p,
                RuleAttribute::Table(t) => r.table = *t,
                RuleAttribute::Destination(IpAddr::V4(ip)) if m.header.dst_len == 32 => {
                    r.to = Some(*ip)
                }
                RuleAttribute::Destination(_) => return None,
                RuleAttribute::FwMark(v) => r.fwmark = Some(*v),
                RuleAttribute::Iifname(name) => r.iif_lo = name == LOOPBACK,
                RuleAttribute::IpProtocol(p) => r.ipproto = Some(*p),
                RuleAttribute::DestinationPortRange(RulePortRange { start, end })
                    if start == end =>
                {
                    r.dport = Some(*start)
                }
                _ => {}
            }
        }
        Some(r)
    }
}

/// Adds the rules and the route (idempotent), removing stale rules of ours.
pub async fn install(
    pod: &PodNetns,
    pod_ip: Ipv4Addr,
    wanted: Vec<Rule>,
) -> Result<(), CaptureError> {
    in_netns(pod, "installing rules and route", move |h| async move {
        h.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .table_id(TABLE)
                    .kind(RouteType::Local)
                    .scope(RouteScope::Host)
                    .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                    .output_interface(loopback_index())
                    .pref_source(pod_ip)
                    .build(),
            )
            .replace()
            .execute()
            .await?;
        // Stale rules go first. The kernel deletes the first rule matching what a delete
        // names, and a stale rule may name less than a wanted one at the same priority, so a
        // delete can take the wanted rule instead: list again until nothing stale is left
        // (each round removes at least one rule), then add what is missing.
        for _ in 0..=2 * wanted.len() {
            let stale: Vec<RuleMessage> = list_ours(&h)
                .await?
                .into_iter()
                .filter(|(r, _)| !wanted.contains(r))
                .map(|(_, m)| m)
                .collect();
            if stale.is_empty() {
                break;
            }
            for message in stale {
                match h.rule().del(message).execute().await {
                    // Already taken by an earlier delete of this round.
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT => {}
                    other => other?,
                }
            }
        }
        let existing = list_ours(&h).await?;
        for rule in &wanted {
            if !existing.iter().any(|(r, _)| r == rule) {
                add_rule(&h, rule).await?;
            }
        }
        Ok(())
    })
    .await
}

/// Deletes our rules and every route of our table.
pub async fn remove(pod: &PodNetns) -> Result<(), CaptureError> {
    in_netns(pod, "removing rules and route", |h| async move {
        for (_, message) in list_ours(&h).await? {
            h.rule().del(message).execute().await?;
        }
        for route in routes_of_table(&h).await? {
            h.route().del(route).execute().await?;
        }
        Ok(())
    })
    .await
}

/// What of ours is in a pod's netns: rules (by priority) and routes of [`TABLE`]. Tests use it
/// to check that nothing is left behind.
pub async fn leftovers(pod: &PodNetns) -> Result<(Vec<Rule>, usize), CaptureError> {
    in_netns(pod, "listing rules and routes", |h| async move {
        let rules = list_ours(&h).await?.into_iter().map(|(r, _)| r).collect();
        let routes = routes_of_table(&h).await?.len();
        Ok((rules, routes))
    })
    .await
}

fn loopback_index() -> u32 {
    // The loopback device has index 1 in every network namespace.
    1
}

async fn add_rule(h: &Handle, rule: &Rule) -> Result<(), rtnetlink::Error> {
    let mut req = h
        .rule()
        .add()
        .v4()
        .priority(rule.priority)
        .table_id(rule.table)
        .action(RuleAction::ToTable);
    if let Some(to) = rule.to {
        req = req.destination_prefix(to, 32);
    }
    if let Some(mark) = rule.fwmark {
        req = req.fw_mark(mark);
        req.message_mut()
            .attributes
            .push(RuleAttribute::FwMask(MARK_MASK));
    }
    if rule.iif_lo {
        req = req.input_interface(LOOPBACK);
    }
    if let Some(p) = rule.ipproto {
        req.message_mut()
            .attributes
            .push(RuleAttribute::IpProtocol(p));
    }
    if let Some(port) = rule.dport {
        req.message_mut()
            .attributes
            .push(RuleAttribute::DestinationPortRange(RulePortRange {
                start: port,
                end: port,
            }));
    }
    match req.execute().await {
        // Added concurrently by a repeated ADD: the rule is there, which is what we want.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        other => other,
    }
}

async fn list_ours(h: &Handle) -> Result<Vec<(Rule, RuleMessage)>, rtnetlink::Error> {
    let all: Vec<RuleMessage> = h.rule().get(IpVersion::V4).execute().try_collect().await?;
    Ok(all
        .into_iter()
        .filter_map(|m| {
            let rule = Rule::from_message(&m)?;
            PRIORITIES.contains(&rule.priority).then_some((rule, m))
        })
        .collect())
}

async fn routes_of_table(
    h: &Handle,
) -> Result<Vec<netlink_packet_route::route::RouteMessage>, rtnetlink::Error> {
    let filter = RouteMessageBuilder::<Ipv4Addr>::new()
        .table_id(TABLE)
        .build();
    let all: Vec<_> = h.route().get(filter).execute().try_collect().await?;
    Ok(all
        .into_iter()
        .filter(|r| {
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            table == TABLE
        })
        .collect())
}

/// Runs `f` with an rtnetlink handle whose socket lives in the pod's netns.
///
/// The pod's netns worker hands out a descriptor of its netns; a short-lived thread enters it
/// and runs a current-thread runtime for the netlink exchange (the worker's own stack is kept
/// small, and the node's runtime threads must never change netns).
async fn in_netns<T, F, Fut>(pod: &PodNetns, what: &str, f: F) -> Result<T, CaptureError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, rtnetlink::Error>>,
{
    let err = |source: std::io::Error| CaptureError::Routing {
        netns: pod.netns.clone(),
        what: what.to_string(),
        source,
    };
    let netns: File = pod
        .worker
        .run(|| File::open("/proc/thread-self/ns/net"))
        .map_err(err)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("capture-netlink".into())
        .spawn(move || {
            let run = || -> std::io::Result<T> {
                nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()?;
                rt.block_on(async move {
                    let (conn, handle, _) = rtnetlink::new_connection()?;
                    tokio::spawn(conn);
                    f(handle).await.map_err(netlink_io_error)
                })
            };
            let _ = tx.send(run());
        })
        .map_err(err)?;
    rx.await
        .map_err(|_| err(std::io::Error::other("the netlink thread died")))?
        .map_err(err)
}

fn netlink_io_error(e: rtnetlink::Error) -> std::io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => std::io::Error::other(other.to_string()),
    }
}

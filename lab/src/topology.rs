//! The lab's network: a private root netns with a bridge, one netns per node on the bridge, and
//! empty pod sandboxes that each node's CNI chain (`runtime`: Debian's `ptp` plugin with
//! `host-local` IPAM) wires to the node. Plain routing, no NAT, no overlay: every pod reaches
//! every pod by its own address, as a Kubernetes CNI guarantees.
//!
//! ```text
//!  root netns: br0 10.X.0.254 ── node1 ─veth─ eth0 10.X.0.1 (netns node1) ── vethXXXX ─veth─ eth0 10.X.1.2/24 (pod)
//!                             └─ node2 ─veth─ eth0 10.X.0.2 (netns node2) ── vethYYYY ─veth─ eth0 10.X.2.2/24 (pod)
//! ```
//!
//! A pod routes everything via `10.X.N.1` (ptp puts that address on the node end of every pod
//! veth of node N); nodes route each local pod's /32 to its veth (ptp) and other nodes' pod
//! CIDRs via those nodes' addresses.

use crate::cmd::{ip_in, CmdError};
use crate::netns::{self, NetnsError};
use crate::plan::{self, AddressPlan, LabId, PlanError, BRIDGE, UPLINK};
use crate::state::NodeInfo;

/// A piece of the lab network that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("building {what}: {source}")]
    Cmd {
        what: String,
        #[source]
        source: CmdError,
    },
    #[error("building {what}: {source}")]
    Netns {
        what: String,
        #[source]
        source: NetnsError,
    },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("network namespace {0} already exists: a leftover of another run? (`amesh-lab down --all` removes it)")]
    Exists(String),
}

fn cmd_err(what: impl Into<String>) -> impl FnOnce(CmdError) -> TopologyError {
    let what = what.into();
    move |source| TopologyError::Cmd { what, source }
}

fn ns_err(what: impl Into<String>) -> impl FnOnce(NetnsError) -> TopologyError {
    let what = what.into();
    move |source| TopologyError::Netns { what, source }
}

fn new_netns(name: &str, what: &str) -> Result<(), TopologyError> {
    if netns::exists(name) {
        return Err(TopologyError::Exists(name.to_string()));
    }
    netns::add(name).map_err(ns_err(what))
}

/// Creates the root netns with the bridge `br0` and the root's own address on it.
pub fn create_root(
    id: &LabId,
    plan: &AddressPlan,
    dual_stack: bool,
) -> Result<String, TopologyError> {
    let root = id.root_netns();
    let what = format!("root netns {root}");
    new_netns(&root, &what)?;
    let addr = format!("{}/{}", plan.root_ip(), plan.node_cidr().prefix_len());
    ip_in(&root, ["link", "add", BRIDGE, "type", "bridge"]).map_err(cmd_err(&what))?;
    ip_in(&root, ["addr", "add", &addr, "dev", BRIDGE]).map_err(cmd_err(&what))?;
    if dual_stack {
        let addr6 = format!("{}/{}", plan.root_ip6(), plan.node_cidr6().prefix_len());
        ip_in(&root, ["-6", "addr", "add", &addr6, "dev", BRIDGE, "nodad"])
            .map_err(cmd_err(&what))?;
    }
    ip_in(&root, ["link", "set", BRIDGE, "up"]).map_err(cmd_err(&what))?;
    Ok(root)
}

/// Addresses configured at once rather than after duplicate address detection (a lab owns
/// its addresses; DAD would only delay every IPv6 interface by a second or two).
const NO_DAD: [(&str, &str); 2] = [
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
];

/// Creates node number `n`: its netns, a veth to the bridge, its address, forwarding on, and
/// a route from the root netns to its pod CIDR.
pub fn add_node(
    id: &LabId,
    plan: &AddressPlan,
    n: usize,
    dual_stack: bool,
) -> Result<NodeInfo, TopologyError> {
    let name = plan::node_name(n);
    let node = NodeInfo {
        netns: id.node_netns(&name),
        ip: plan.node_ip(n)?,
        pod_cidr: plan.pod_cidr(n)?,
        number: n,
        name,
        ztunnel: None,
        ip6: if dual_stack {
            Some(plan.node_ip6(n)?)
        } else {
            None
        },
        pod_cidr6: if dual_stack {
            Some(plan.pod_cidr6(n)?)
        } else {
            None
        },
    };
    let what = format!("node {} (netns {})", node.name, node.netns);
    new_netns(&node.netns, &what)?;
    // Before any interface exists, so that `default` applies to the veths made later. Loose or
    // strict reverse-path filtering would drop replies ztunnel sends with a pod's address.
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
        ("net.ipv6.conf.all.forwarding", "1"),
    ]
    .into_iter()
    .chain(NO_DAD)
    {
        netns::sysctl(&node.netns, key, value).map_err(ns_err(&what))?;
    }
    let root = id.root_netns();
    let port = plan::node_port(n);
    let addr = format!("{}/{}", node.ip, plan.node_cidr().prefix_len());
    let cidr = node.pod_cidr.to_string();
    let node_ip = node.ip.to_string();
    let steps: [(&str, Vec<&str>); 6] = [
        (
            &root,
            vec![
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                UPLINK,
                "netns",
                &node.netns,
            ],
        ),
        (&root, vec!["link", "set", &port, "master", BRIDGE, "up"]),
        (&node.netns, vec!["addr", "add", &addr, "dev", UPLINK]),
        (&node.netns, vec!["link", "set", UPLINK, "up"]),
        (&root, vec!["route", "add", &cidr, "via", &node_ip]),
        (&node.netns, vec!["link", "set", "lo", "up"]),
    ];
    for (ns, args) in steps {
        ip_in(ns, args).map_err(cmd_err(&what))?;
    }
    if let (Some(ip6), Some(cidr6)) = (node.ip6, node.pod_cidr6) {
        let addr6 = format!("{ip6}/{}", plan.node_cidr6().prefix_len());
        ip_in(
            &node.netns,
            ["-6", "addr", "add", &addr6, "dev", UPLINK, "nodad"],
        )
        .map_err(cmd_err(&what))?;
        ip_in(
            &root,
            [
                "-6",
                "route",
                "add",
                &cidr6.to_string(),
                "via",
                &ip6.to_string(),
            ],
        )
        .map_err(cmd_err(&what))?;
    }
    Ok(node)
}

/// Makes every node route the other nodes' pod CIDRs via their node addresses.
pub fn route_between_nodes(nodes: &[NodeInfo]) -> Result<(), TopologyError> {
    for from in nodes {
        for to in nodes.iter().filter(|n| n.number != from.number) {
            let what = format!("route {} -> {}", from.name, to.name);
            let cidr = to.pod_cidr.to_string();
            let via = to.ip.to_string();
            ip_in(&from.netns, ["route", "add", &cidr, "via", &via]).map_err(cmd_err(&what))?;
            if let (Some(cidr6), Some(via6)) = (to.pod_cidr6, to.ip6) {
                let (cidr6, via6) = (cidr6.to_string(), via6.to_string());
                ip_in(&from.netns, ["-6", "route", "add", &cidr6, "via", &via6])
                    .map_err(cmd_err(&what))?;
            }
        }
    }
    Ok(())
}

/// Creates a pod's sandbox network namespace, empty: as a container runtime makes it before
/// it runs the node's CNI chain (`runtime`), which wires it to the node.
pub fn create_sandbox(id: &LabId, namespace: &str, pod: &str) -> Result<String, TopologyError> {
    let name = id.pod_netns(namespace, pod);
    let what = format!("pod {namespace}/{pod} (netns {name})");
    new_netns(&name, &what)?;
    // Replies ztunnel sends with other addresses than the pod's must not be filtered.
    for (key, value) in [
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
    ]
    .into_iter()
    .chain(NO_DAD)
    {
        netns::sysctl(&name, key, value).map_err(ns_err(&what))?;
    }
    Ok(name)
}

/// Deletes a pod's netns (its veth and the node's route go with it).
pub fn delete_pod(netns_name: &str) -> Result<(), TopologyError> {
    netns::delete(netns_name).map_err(ns_err(format!("deleting pod netns {netns_name}")))
}

/// Deletes every netns of lab `id`: pods, then nodes, then the root. Deleting a netns destroys
/// its interfaces, and a veth dies with either end, so no link survives. Continues past
/// failures and reports the first.
pub fn destroy(id: &LabId) -> Result<(), TopologyError> {
    let prefix = id.netns_prefix();
    let root = id.root_netns();
    let mut all: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    // Pods first (their names contain a dot), then nodes, the root last.
    all.sort_by_key(|n| (n == &root, !n.contains('.')));
    let mut first_err = None;
    for name in all {
        if let Err(e) = netns::delete(&name) {
            tracing::warn!(netns = %name, error = %e, "cannot delete netns");
            first_err.get_or_insert(ns_err(format!("deleting netns {name}"))(e));
        }
    }
    first_err.map_or(Ok(()), Err)
}

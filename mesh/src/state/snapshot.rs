//! An immutable view of workloads, services and policies, with the indexes the data path
//! needs built once, so every lookup on a connection is a hash lookup without a lock.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::workload::PortMap;
use super::{Model, Policy, PolicyScope, Service, Workload};

/// A workload serving a service, with its service port → target port map for that service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub workload: Arc<Workload>,
    pub port_map: PortMap,
}

/// One consistent version of the config.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Bumped by the store on every change; subscribers see the same number.
    version: u64,
    /// The local network: what [`Snapshot::workload_by_ip`] and friends look in.
    network: String,
    // Primary maps, ordered so that listings (config dump, local file) are stable.
    pub(super) workloads: BTreeMap<String, Arc<Workload>>,
    pub(super) services: BTreeMap<String, Arc<Service>>,
    pub(super) policies: BTreeMap<String, Arc<Policy>>,
    // Indexes. Keyed network first so a lookup borrows `&str` instead of building a key.
    workload_by_ip: HashMap<String, HashMap<IpAddr, Arc<Workload>>>,
    service_by_vip: HashMap<String, HashMap<IpAddr, Arc<Service>>>,
    services_by_host: HashMap<String, Vec<Arc<Service>>>,
    endpoints: HashMap<String, Vec<Endpoint>>,
    global_policies: Vec<Arc<Policy>>,
    namespace_policies: HashMap<String, Vec<Arc<Policy>>>,
}

impl Snapshot {
    /// A snapshot of `model` on the default network, version 0. Later duplicates of a
    /// workload uid, service key or policy key replace earlier ones.
    pub fn new(model: Model) -> Snapshot {
        Self::build(0, String::new(), Primary::from_model(model))
    }

    pub(super) fn build(version: u64, network: String, p: Primary) -> Snapshot {
        let mut snap = Snapshot {
            version,
            network,
            workloads: p.workloads,
            services: p.services,
            policies: p.policies,
            ..Snapshot::default()
        };
        snap.index();
        snap
    }

    fn index(&mut self) {
        // Iterating the ordered maps makes every conflict below resolve the same way each time.
        for w in self.workloads.values() {
            let by_ip = self.workload_by_ip.entry(w.network.clone()).or_default();
            for ip in &w.addresses {
                by_ip
                    .entry(*ip)
                    .and_modify(|cur| {
                        // Two workloads on one IP happen while a pod is replaced: prefer the
                        // healthy one, then the first uid.
                        if w.healthy && !cur.healthy {
                            *cur = w.clone();
                        }
                    })
                    .or_insert_with(|| w.clone());
            }
            for (key, port_map) in &w.services {
                self.endpoints
                    .entry(key.clone())
                    .or_default()
                    .push(Endpoint {
                        workload: w.clone(),
                        port_map: port_map.clone(),
                    });
            }
        }
        for s in self.services.values() {
            for vip in &s.vips {
                // First key wins on a VIP conflict.
                self.service_by_vip
                    .entry(vip.network.clone())
                    .or_default()
                    .entry(vip.address)
                    .or_insert_with(|| s.clone());
            }
            self.services_by_host
                .entry(s.hostname.clone())
                .or_default()
                .push(s.clone());
        }
        for list in self.services_by_host.values_mut() {
            list.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        }
        for p in self.policies.values() {
            match p.scope {
                PolicyScope::Global => self.global_policies.push(p.clone()),
                PolicyScope::Namespace => self
                    .namespace_policies
                    .entry(p.namespace.clone())
                    .or_default()
                    .push(p.clone()),
                PolicyScope::WorkloadSelector => {}
            }
        }
    }

    /// Counter of changes: equal versions from one store mean equal content.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The network that [`Snapshot::workload_by_ip`] and [`Snapshot::service_by_vip`] use.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// The workload with `ip` on the local network.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workload_by_network_ip(&self.network, ip)
    }

    pub fn workload_by_network_ip(&self, network: &str, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workload_by_ip.get(network)?.get(&ip)
    }

    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(uid)
    }

    /// The service with virtual IP `ip` on the local network.
    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.service_by_network_vip(&self.network, ip)
    }

    pub fn service_by_network_vip(&self, network: &str, ip: IpAddr) -> Option<&Arc<Service>> {
        self.service_by_vip.get(network)?.get(&ip)
    }

    /// A service with this hostname. Several namespaces may define one hostname (Istio's
    /// ServiceEntry); then this is the one of the first namespace in name order — use
    /// [`Snapshot::services_by_host`] or [`Snapshot::service`] to choose.
    pub fn service_by_host(&self, hostname: &str) -> Option<&Arc<Service>> {
        self.services_by_host.get(hostname)?.first()
    }

    /// Every service with this hostname, ordered by namespace.
    pub fn services_by_host(&self, hostname: &str) -> &[Arc<Service>] {
        self.services_by_host
            .get(hostname)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The service with key `ns/hostname`.
    pub fn service(&self, key: &str) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    /// Workloads serving the service `ns/hostname`, ordered by uid; indexed from the
    /// workloads, so they are known even before (or without) the service itself.
    pub fn endpoints(&self, service_key: &str) -> &[Endpoint] {
        self.endpoints
            .get(service_key)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The policy `ns/name`.
    pub fn policy(&self, key: &str) -> Option<&Arc<Policy>> {
        self.policies.get(key)
    }

    /// Policies that apply to `workload`, each once: global ones, NAMESPACE-scoped ones of
    /// its namespace, then the ones it names (those not found are skipped). Within each
    /// group ordered by key, so the deciding policy of a decision is stable.
    pub fn policies_for<'a>(
        &'a self,
        workload: &'a Workload,
    ) -> impl Iterator<Item = &'a Arc<Policy>> + 'a {
        let in_namespace = self
            .namespace_policies
            .get(&workload.namespace)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let named = workload
            .authorization_policies
            .iter()
            .filter_map(|key| self.policies.get(key))
            // Skip what the first two groups already yielded.
            .filter(move |p| match p.scope {
                PolicyScope::Global => false,
                PolicyScope::Namespace => p.namespace != workload.namespace,
                PolicyScope::WorkloadSelector => true,
            });
        self.global_policies.iter().chain(in_namespace).chain(named)
    }

    /// All workloads, ordered by uid.
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    /// All services, ordered by key.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// All policies, ordered by key.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.values()
    }

    /// A copy of the content as a [`Model`] (e.g. for a config dump or a local file).
    pub fn to_model(&self) -> Model {
        Model {
            workloads: self.workloads().map(|w| (**w).clone()).collect(),
            services: self.services().map(|s| (**s).clone()).collect(),
            policies: self.policies().map(|p| (**p).clone()).collect(),
        }
    }
}

/// The primary maps a snapshot is built from; the store edits a copy of them per change.
#[derive(Debug, Clone, Default)]
pub(super) struct Primary {
    pub(super) workloads: BTreeMap<String, Arc<Workload>>,
    pub(super) services: BTreeMap<String, Arc<Service>>,
    pub(super) policies: BTreeMap<String, Arc<Policy>>,
}

impl Primary {
    pub(super) fn of(snapshot: &Snapshot) -> Primary {
        Primary {
            workloads: snapshot.workloads.clone(),
            services: snapshot.services.clone(),
            policies: snapshot.policies.clone(),
        }
    }

    /// Whether `snapshot` holds exactly this content (cheap when the `Arc`s are shared).
    pub(super) fn same_as(&self, snapshot: &Snapshot) -> bool {
        self.workloads == snapshot.workloads
            && self.services == snapshot.services
            && self.policies == snapshot.policies
    }

    pub(super) fn from_model(model: Model) -> Primary {
        let mut p = Primary::default();
        for w in model.workloads {
            p.workloads.insert(w.uid.clone(), Arc::new(w));
        }
        for s in model.services {
            p.services.insert(s.key(), Arc::new(s));
        }
        for pol in model.policies {
            p.policies.insert(pol.key(), Arc::new(pol));
        }
        p
    }
}

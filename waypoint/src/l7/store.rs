//! The waypoint's L7 config as one immutable snapshot swapped on every update, and the xDS
//! handler that feeds it together with the shared L4 state (`mesh::state::StateStore`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use amesh_proto::amesh::l7::v1 as pb;
use amesh_proto::envoy::service::discovery::v3::Resource;
use amesh_proto::{
    L7_AUTHORIZATION_TYPE_URL, RATE_LIMIT_TYPE_URL, REQUEST_AUTHENTICATION_TYPE_URL,
    SERVICE_ROUTES_TYPE_URL,
};
use arc_swap::ArcSwap;
use mesh::state::StateStore;
use mesh::xds::ResourceHandler;
use prost::Message;

use super::jwt::JwtPolicy;
use super::{L7Policy, RouteTable};
use crate::ratelimit::RateLimitPolicy;

/// One version of the L7 config.
#[derive(Debug, Default)]
pub struct L7Snapshot {
    /// By service key `<namespace>/<hostname>`.
    pub routes: BTreeMap<String, Arc<RouteTable>>,
    /// By `<namespace>/<name>`.
    pub policies: BTreeMap<String, Arc<L7Policy>>,
    /// RequestAuthentications, by `<namespace>/<name>`.
    pub authentications: BTreeMap<String, Arc<JwtPolicy>>,
    /// Local rate limits, by `<namespace>/<name>`.
    pub rate_limits: BTreeMap<String, Arc<RateLimitPolicy>>,
    /// The resources this snapshot was converted from, by the same keys: `/config_dump`
    /// reports them so `amesh explain` can rebuild this snapshot ([`L7Store::replace`]) and
    /// decide a request with the waypoint's own code.
    pub sources: Sources,
}

/// The `amesh.l7.v1` resources of one [`L7Snapshot`], as received.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub routes: BTreeMap<String, pb::ServiceRoutes>,
    pub policies: BTreeMap<String, pb::Authorization>,
    pub authentications: BTreeMap<String, pb::RequestAuthentication>,
    pub rate_limits: BTreeMap<String, pb::RateLimit>,
}

impl Sources {
    /// All of them in the local-file message, which [`L7Store::replace`] loads.
    pub fn to_local(&self) -> pb::LocalL7Config {
        pb::LocalL7Config {
            routes: self.routes.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
            authentications: self.authentications.values().cloned().collect(),
            rate_limits: self.rate_limits.values().cloned().collect(),
        }
    }
}

/// Lock-free reads of the current [`L7Snapshot`]. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct L7Store {
    current: Arc<ArcSwap<L7Snapshot>>,
}

impl L7Store {
    pub fn snapshot(&self) -> Arc<L7Snapshot> {
        self.current.load_full()
    }

    /// Applies one xDS update of `type_url`, all or nothing.
    pub fn apply_delta(
        &self,
        type_url: &str,
        upserts: Vec<Resource>,
        removed: &[String],
    ) -> Result<(), String> {
        let old = self.snapshot();
        let mut routes = old.routes.clone();
        let mut policies = old.policies.clone();
        let mut authentications = old.authentications.clone();
        let mut rate_limits = old.rate_limits.clone();
        let mut sources = old.sources.clone();
        match type_url {
            SERVICE_ROUTES_TYPE_URL => {
                for r in upserts {
                    let any = r
                        .resource
                        .ok_or_else(|| format!("{}: no resource", r.name))?;
                    let p = pb::ServiceRoutes::decode(any.value.as_slice())
                        .map_err(|e| format!("{}: not a ServiceRoutes: {e}", r.name))?;
                    let table = RouteTable::from_proto(p.clone()).map_err(|e| e.to_string())?;
                    sources.routes.insert(r.name.clone(), p);
                    routes.insert(r.name, Arc::new(table));
                }
                for name in removed {
                    routes.remove(name);
                    sources.routes.remove(name);
                }
            }
            L7_AUTHORIZATION_TYPE_URL => {
                for r in upserts {
                    let any = r
                        .resource
                        .ok_or_else(|| format!("{}: no resource", r.name))?;
                    let p = pb::Authorization::decode(any.value.as_slice())
                        .map_err(|e| format!("{}: not an Authorization: {e}", r.name))?;
                    let policy = L7Policy::from_proto(p.clone()).map_err(|e| e.to_string())?;
                    sources.policies.insert(r.name.clone(), p);
                    policies.insert(r.name, Arc::new(policy));
                }
                for name in removed {
                    policies.remove(name);
                    sources.policies.remove(name);
                }
            }
            REQUEST_AUTHENTICATION_TYPE_URL => {
                for r in upserts {
                    let any = r
                        .resource
                        .ok_or_else(|| format!("{}: no resource", r.name))?;
                    let p = pb::RequestAuthentication::decode(any.value.as_slice())
                        .map_err(|e| format!("{}: not a RequestAuthentication: {e}", r.name))?;
                    let policy = JwtPolicy::from_proto(p.clone()).map_err(|e| e.to_string())?;
                    sources.authentications.insert(r.name.clone(), p);
                    authentications.insert(r.name, Arc::new(policy));
                }
                for name in removed {
                    authentications.remove(name);
                    sources.authentications.remove(name);
                }
            }
            RATE_LIMIT_TYPE_URL => {
                for r in upserts {
                    let any = r
                        .resource
                        .ok_or_else(|| format!("{}: no resource", r.name))?;
                    let p = pb::RateLimit::decode(any.value.as_slice())
                        .map_err(|e| format!("{}: not a RateLimit: {e}", r.name))?;
                    let previous = old.rate_limits.get(&r.name).map(|p| &**p);
                    let policy = RateLimitPolicy::from_proto(p.clone(), previous)
                        .map_err(|e| e.to_string())?;
                    sources.rate_limits.insert(r.name.clone(), p);
                    rate_limits.insert(r.name, Arc::new(policy));
                }
                for name in removed {
                    rate_limits.remove(name);
                    sources.rate_limits.remove(name);
                }
            }
            other => return Err(format!("type {other} is not an L7 type")),
        }
        self.current.store(Arc::new(L7Snapshot {
            routes,
            policies,
            authentications,
            rate_limits,
            sources,
        }));
        Ok(())
    }

    /// Replaces everything with a local file's content.
    pub fn replace(&self, config: pb::LocalL7Config) -> Result<(), String> {
        let mut sources = Sources::default();
        let mut routes = BTreeMap::new();
        for r in config.routes {
            let table = RouteTable::from_proto(r.clone()).map_err(|e| e.to_string())?;
            sources.routes.insert(table.name.clone(), r);
            routes.insert(table.name.clone(), Arc::new(table));
        }
        let mut policies = BTreeMap::new();
        for p in config.policies {
            let policy = L7Policy::from_proto(p.clone()).map_err(|e| e.to_string())?;
            sources.policies.insert(policy.key.clone(), p);
            policies.insert(policy.key.clone(), Arc::new(policy));
        }
        let mut authentications = BTreeMap::new();
        for a in config.authentications {
            let policy = JwtPolicy::from_proto(a.clone()).map_err(|e| e.to_string())?;
            sources.authentications.insert(policy.key.clone(), a);
            authentications.insert(policy.key.clone(), Arc::new(policy));
        }
        let old = self.snapshot();
        let mut rate_limits = BTreeMap::new();
        for r in config.rate_limits {
            let key = format!("{}/{}", r.namespace, r.name);
            let previous = old.rate_limits.get(&key).map(|p| &**p);
            let policy =
                RateLimitPolicy::from_proto(r.clone(), previous).map_err(|e| e.to_string())?;
            sources.rate_limits.insert(policy.key.clone(), r);
            rate_limits.insert(policy.key.clone(), Arc::new(policy));
        }
        self.current.store(Arc::new(L7Snapshot {
            routes,
            policies,
            authentications,
            rate_limits,
            sources,
        }));
        Ok(())
    }

    /// Loads `path` (protobuf `LocalL7Config`).
    pub fn load_file(&self, path: &Path) -> Result<(), String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config = pb::LocalL7Config::decode(bytes.as_slice()).map_err(|e| {
            format!(
                "{}: not a protobuf amesh.l7.v1.LocalL7Config: {e}",
                path.display()
            )
        })?;
        self.replace(config)
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Hands Istio's types to the L4 state and amesh's L7 types to the L7 store.
pub struct Handler {
    pub state: StateStore,
    pub l7: L7Store,
}

impl ResourceHandler for Handler {
    fn apply(
        &self,
        type_url: &str,
        upserts: Vec<Resource>,
        removed: &[String],
    ) -> Result<(), String> {
        match type_url {
            SERVICE_ROUTES_TYPE_URL
            | L7_AUTHORIZATION_TYPE_URL
            | REQUEST_AUTHENTICATION_TYPE_URL
            | RATE_LIMIT_TYPE_URL => self.l7.apply_delta(type_url, upserts, removed),
            _ => self
                .state
                .apply_delta(type_url, upserts, removed)
                .map_err(|e| e.to_string()),
        }
    }
}

/// Re-reads the local file when it changes (polled: the lab rewrites it in place).
pub fn watch_file(path: std::path::PathBuf, store: L7Store) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = std::fs::read(&path).ok();
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let now = std::fs::read(&path).ok();
            if now.is_some() && now != last {
                match store.load_file(&path) {
                    Ok(()) => tracing::info!(file = %path.display(), "L7 config reloaded"),
                    Err(e) => {
                        tracing::warn!(error = %e, "L7 config rejected; keeping the last one")
                    }
                }
                last = now;
            }
        }
    })
}

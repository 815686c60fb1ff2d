//! Endpoint choice within a service (or one of its DestinationRule subsets): the candidates are
//! its healthy endpoints (in the subset, not ejected by outlier detection unless fewer than
//! half remain — Envoy's panic threshold —, and for a retry with `other_host` not tried yet
//! when another exists), picked by round robin, least request (the less loaded of two random
//! endpoints), random, or rendezvous hashing of a request key over the endpoints' workload
//! uids. The candidates are filtered in place and never collected: the common path allocates
//! nothing.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mesh::state::{AppProtocol, Snapshot, Workload};
use rand::Rng;

use crate::outlier::Outlier;
use crate::policy::{HashOn, LoadBalancer, Subset};
use crate::upstream::{Endpoint, Version};
use crate::Waypoint;

/// The waypoint's default balancer (`AMESH_WAYPOINT_LB`), for services whose DestinationRule
/// does not choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balancer {
    /// In turn (Istio's default for waypoints).
    RoundRobin,
    /// The less loaded of two endpoints drawn at random (Envoy's LEAST_REQUEST): requests in
    /// flight per endpoint, counted by the waypoint.
    LeastRequest,
}

/// Where a request goes, before an endpoint is picked.
pub(crate) enum Dest {
    Service { key: String, port: u16 },
    Workload(Arc<Workload>, SocketAddr),
    None,
}

pub(crate) enum Pick {
    UnknownService(String),
    NoHealthy,
}

/// What narrows and steers the choice, from the destination's policy and the request.
#[derive(Default, Clone, Copy)]
pub(crate) struct Choice<'a> {
    pub lb: Option<&'a LoadBalancer>,
    pub subset: Option<&'a Subset>,
    pub outlier: Option<&'a Outlier>,
    /// The request's hash key, when the balancer hashes.
    pub hash: Option<u64>,
    /// Endpoints already tried (retries with `other_host`).
    pub exclude: &'a [IpAddr],
    /// Round-robin position key (the cluster: service or service|subset).
    pub rr_key: Option<&'a str>,
}

/// Picks an endpoint of `dest`.
pub(crate) fn pick_endpoint(
    wp: &Waypoint,
    snapshot: &Snapshot,
    dest: &Dest,
    version: Version,
    choice: &Choice<'_>,
) -> Result<(Endpoint, Arc<Workload>), Pick> {
    let (key, port) = match dest {
        Dest::Workload(w, addr) => {
            return Ok((
                Endpoint {
                    addr: *addr,
                    identity: w.identity(),
                    version,
                },
                w.clone(),
            ))
        }
        Dest::None => return Err(Pick::NoHealthy),
        Dest::Service { key, port } => (key, *port),
    };
    let service = snapshot
        .service(key)
        .ok_or_else(|| Pick::UnknownService(key.clone()))?;
    let all = snapshot.endpoints(key);
    let rr = || wp.next_index(choice.rr_key.unwrap_or(key));
    let load = |ip: IpAddr| wp.in_flight.load(ip);
    let e = select(all, choice, wp.balancer, &rr, &load).ok_or(Pick::NoHealthy)?;
    let ip = |e: &mesh::state::Endpoint| e.workload.addresses[0];
    let target_port = e
        .port_map
        .get(&port)
        .copied()
        .filter(|p| *p != 0)
        .or_else(|| {
            service
                .port(port)
                .map(|p| p.target_port)
                .filter(|p| *p != 0)
        })
        .unwrap_or(port);
    // A port declared HTTP/2 or gRPC is spoken to in HTTP/2 whatever the client used;
    // otherwise the client's version goes through (Istio's protocol selection).
    let version = match service.port(port).map(|p| p.app_protocol) {
        Some(AppProtocol::Http2 | AppProtocol::Grpc) => Version::Http2,
        _ => version,
    };
    Ok((
        Endpoint {
            addr: SocketAddr::new(ip(e), target_port),
            identity: e.workload.identity(),
            version,
        },
        e.workload.clone(),
    ))
}

/// The endpoint of `all` that `choice` leads to; `rr` gives the next round-robin position,
/// `load` an endpoint's requests in flight.
pub(crate) fn select<'e>(
    all: &'e [mesh::state::Endpoint],
    choice: &Choice<'_>,
    default: Balancer,
    rr: &dyn Fn() -> usize,
    load: &dyn Fn(IpAddr) -> usize,
) -> Option<&'e mesh::state::Endpoint> {
    let base = |e: &&mesh::state::Endpoint| {
        e.workload.healthy
            && !e.workload.addresses.is_empty()
            && choice
                .subset
                .is_none_or(|s| s.uids.contains(e.workload.uid.as_str()))
    };
    let ip = |e: &mesh::state::Endpoint| e.workload.addresses[0];
    let pick = |ejected: &dyn Fn(IpAddr) -> bool| -> Option<&'e mesh::state::Endpoint> {
        let total = all.iter().filter(base).count();
        if total == 0 {
            return None;
        }
        let available = all.iter().filter(base).filter(|e| !ejected(ip(e))).count();
        // Envoy's panic threshold (50 %): with fewer healthy hosts than that, all are used.
        let skip_ejected = available * 2 >= total;
        let usable = |e: &&mesh::state::Endpoint| base(e) && !(skip_ejected && ejected(ip(e)));
        let fresh = |e: &&mesh::state::Endpoint| usable(e) && !choice.exclude.contains(&ip(e));
        let n_fresh = if choice.exclude.is_empty() {
            0
        } else {
            all.iter().filter(fresh).count()
        };
        let candidates = |e: &&mesh::state::Endpoint| {
            if n_fresh > 0 {
                fresh(e)
            } else {
                usable(e)
            }
        };
        let n = if n_fresh > 0 {
            n_fresh
        } else {
            all.iter().filter(usable).count()
        };
        if n == 0 {
            return None;
        }
        let nth = |i: usize| all.iter().filter(candidates).nth(i);
        let lb = choice.lb.unwrap_or(&LoadBalancer::Default);
        let least = match lb {
            LoadBalancer::LeastRequest => true,
            LoadBalancer::Default => default == Balancer::LeastRequest,
            _ => false,
        };
        match (lb, choice.hash) {
            (LoadBalancer::Hash(_), Some(h)) => rendezvous(
                h,
                all.iter()
                    .filter(candidates)
                    .map(|e| e.workload.uid.as_str()),
            )
            .and_then(nth),
            // A hashing request without its key goes anywhere, as in Envoy.
            (LoadBalancer::Hash(_), None) | (LoadBalancer::Random, _) => {
                nth(rand::rng().random_range(0..n))
            }
            _ if least => {
                let load = |i: usize| nth(i).map_or(usize::MAX, |e| load(ip(e)));
                nth(least_of_two(n, load, &mut rand::rng()))
            }
            _ => nth(rr() % n),
        }
    };
    match choice.outlier {
        Some(o) => o.with_ejected(tokio::time::Instant::now(), |ejected| pick(ejected)),
        None => pick(&|_| false),
    }
}

/// Of `n` candidates, the less loaded of two distinct random ones (ties: the first drawn).
pub fn least_of_two(n: usize, load: impl Fn(usize) -> usize, rng: &mut impl Rng) -> usize {
    if n < 2 {
        return 0;
    }
    let a = rng.random_range(0..n);
    let b = (a + rng.random_range(1..n)) % n;
    if load(b) < load(a) {
        b
    } else {
        a
    }
}

/// Rendezvous (highest random weight) hashing: the position of the uid scoring highest for
/// `key`. An endpoint leaving moves only the keys it held; one joining takes only its share.
pub fn rendezvous<'a>(key: u64, uids: impl Iterator<Item = &'a str>) -> Option<usize> {
    uids.enumerate()
        .map(|(i, uid)| (mix(key ^ fnv1a(uid.as_bytes())), i))
        .max()
        .map(|(_, i)| i)
}

/// FNV-1a: stable across processes and versions (std's hasher promises neither), so every
/// waypoint replica maps a key to the same endpoint.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64's finalizer: spreads FNV's weak low bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash key of a request under `on`, if the request has one.
pub fn request_key(
    on: &HashOn,
    headers: &http::HeaderMap,
    query: Option<&str>,
    source_ip: IpAddr,
) -> Option<u64> {
    match on {
        HashOn::Header(name) => headers.get(name).map(|v| fnv1a(v.as_bytes())),
        HashOn::Cookie { name, .. } => cookie(headers, name).map(|v| fnv1a(v.as_bytes())),
        HashOn::SourceIp => Some(match source_ip {
            IpAddr::V4(a) => fnv1a(&a.octets()),
            IpAddr::V6(a) => fnv1a(&a.octets()),
        }),
        HashOn::QueryParameter(name) => query.and_then(|q| {
            q.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == name).then(|| fnv1a(v.as_bytes()))
            })
        }),
    }
}

/// The request's hash key under `on`, and for a cookie with a TTL that the request lacks, the
/// `Set-Cookie` to answer with: a new random value that is the key of this request and, sent
/// back, of the client's next ones.
pub fn hash_key(
    on: &HashOn,
    headers: &http::HeaderMap,
    query: Option<&str>,
    source_ip: IpAddr,
) -> (Option<u64>, Option<http::HeaderValue>) {
    let key = request_key(on, headers, query, source_ip);
    let HashOn::Cookie {
        name,
        path,
        ttl: Some(ttl),
    } = on
    else {
        return (key, None);
    };
    if key.is_some() {
        return (key, None);
    }
    let value = format!("\"{:016x}\"", rand::random::<u64>());
    let mut cookie = format!("{name}={value}; Max-Age={}", ttl.as_secs().max(1));
    if let Some(p) = path {
        cookie.push_str("; Path=");
        cookie.push_str(p);
    }
    cookie.push_str("; HttpOnly");
    (
        Some(fnv1a(value.as_bytes())),
        http::HeaderValue::from_str(&cookie).ok(),
    )
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// Requests in flight per endpoint address (for least request).
#[derive(Default)]
pub struct InFlight(
    parking_lot::RwLock<std::collections::HashMap<std::net::IpAddr, Arc<AtomicUsize>>>,
);

/// One request in flight to an endpoint; the count drops when it is dropped.
pub struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl InFlight {
    pub fn load(&self, ip: std::net::IpAddr) -> usize {
        self.0
            .read()
            .get(&ip)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn start(&self, ip: std::net::IpAddr) -> InFlightGuard {
        // The read guard must be gone before the write lock is taken.
        let known = self.0.read().get(&ip).cloned();
        let counter = known.unwrap_or_else(|| self.0.write().entry(ip).or_default().clone());
        counter.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(counter)
    }
}

/// Round-robin position per service.
#[derive(Default)]
pub struct RoundRobin(parking_lot::RwLock<std::collections::HashMap<String, Arc<AtomicUsize>>>);

impl RoundRobin {
    pub fn next(&self, key: &str) -> usize {
        if let Some(c) = self.0.read().get(key) {
            return c.fetch_add(1, Ordering::Relaxed);
        }
        let c = self.0.write().entry(key.to_string()).or_default().clone();
        c.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
#[path = "balance_tests.rs"]
mod tests;

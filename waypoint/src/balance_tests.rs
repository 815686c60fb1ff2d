use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use mesh::state::{Endpoint as StateEndpoint, TunnelProtocol, WorkloadType};
use mesh::Identity;

use super::*;
use crate::outlier::Report;
use crate::policy::{Level, OutlierConfig};

fn endpoint(n: u8) -> StateEndpoint {
    StateEndpoint {
        workload: Arc::new(Workload {
            uid: format!("Kubernetes//v1/Pod/shop/pod-{n}"),
            name: format!("pod-{n}"),
            namespace: "shop".into(),
            identity: Identity::new("cluster.local", "shop", "default").unwrap(),
            addresses: vec![IpAddr::from([10, 0, 0, n])],
            network: String::new(),
            protocol: TunnelProtocol::Hbone,
            node: "node".into(),
            services: BTreeMap::new(),
            authorization_policies: vec![],
            healthy: true,
            canonical_name: "pod".into(),
            canonical_revision: "v1".into(),
            workload_name: "pod".into(),
            workload_type: WorkloadType::default(),
            cluster_id: "Kubernetes".into(),
            waypoint: None,
        }),
        port_map: BTreeMap::new(),
    }
}

fn endpoints(n: u8) -> Vec<StateEndpoint> {
    (1..=n).map(endpoint).collect()
}

fn last_octet(e: &StateEndpoint) -> u8 {
    match e.workload.addresses[0] {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(_) => unreachable!("test endpoints are IPv4"),
    }
}

/// Picks `times` times and counts picks per endpoint (by last octet).
fn spread(all: &[StateEndpoint], choice: &Choice<'_>, times: usize) -> HashMap<u8, usize> {
    let counter = AtomicUsize::new(0);
    let rr = || counter.fetch_add(1, Ordering::Relaxed);
    let mut seen = HashMap::new();
    for _ in 0..times {
        let e = select(all, choice, Balancer::RoundRobin, &rr, &|_| 0).expect("an endpoint");
        *seen.entry(last_octet(e)).or_default() += 1;
    }
    seen
}

fn subset(name: &str, pods: &[u8]) -> Subset {
    Subset {
        name: name.into(),
        uids: pods
            .iter()
            .map(|n| format!("Kubernetes//v1/Pod/shop/pod-{n}"))
            .collect(),
        level: Level {
            cluster: format!("shop/svc|{name}").into(),
            base: Default::default(),
            ports: vec![],
        },
    }
}

#[test]
fn round_robin_visits_each_endpoint_in_turn() {
    let all = endpoints(3);
    let seen = spread(&all, &Choice::default(), 300);
    assert_eq!(seen.values().copied().collect::<HashSet<_>>(), [100].into());
}

#[test]
fn a_subset_limits_the_candidates() {
    let all = endpoints(4);
    let v2 = subset("v2", &[2, 4]);
    let choice = Choice {
        subset: Some(&v2),
        ..Default::default()
    };
    let seen = spread(&all, &choice, 100);
    assert_eq!(seen.keys().copied().collect::<HashSet<_>>(), [2, 4].into());
    // A subset whose pods are all gone has no endpoint.
    let gone = subset("v9", &[9]);
    let choice = Choice {
        subset: Some(&gone),
        ..Default::default()
    };
    assert!(select(&all, &choice, Balancer::RoundRobin, &|| 0, &|_| 0).is_none());
}

#[test]
fn random_and_least_request() {
    let all = endpoints(4);
    let random = LoadBalancer::Random;
    let seen = spread(
        &all,
        &Choice {
            lb: Some(&random),
            ..Default::default()
        },
        4000,
    );
    assert!(seen.values().all(|n| *n > 800), "{seen:?}");
    // Least request: endpoint 3 idle, the others busy: it wins every draw it is in.
    let least = LoadBalancer::LeastRequest;
    let choice = Choice {
        lb: Some(&least),
        ..Default::default()
    };
    let load = |ip: IpAddr| {
        if ip == IpAddr::from([10, 0, 0, 3]) {
            0
        } else {
            9
        }
    };
    let mut idle = 0;
    for _ in 0..4000 {
        let e = select(&all, &choice, Balancer::RoundRobin, &|| 0, &load).unwrap();
        idle += usize::from(last_octet(e) == 3);
    }
    assert!(idle > 1700, "{idle}");
}

#[test]
fn other_host_prefers_an_endpoint_not_tried() {
    let all = endpoints(3);
    let tried = [IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2])];
    let choice = Choice {
        exclude: &tried,
        ..Default::default()
    };
    let seen = spread(&all, &choice, 30);
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), vec![3]);
    // All tried: any endpoint rather than none.
    let all_tried = [tried[0], tried[1], IpAddr::from([10, 0, 0, 3])];
    let choice = Choice {
        exclude: &all_tried,
        ..Default::default()
    };
    assert_eq!(spread(&all, &choice, 30).len(), 3);
}

#[test]
fn consistent_hash_is_stable_and_moves_little_when_an_endpoint_leaves() {
    let all = endpoints(5);
    let hash = LoadBalancer::Hash(HashOn::SourceIp);
    let pick = |all: &[StateEndpoint], key: u64| {
        let choice = Choice {
            lb: Some(&hash),
            hash: Some(key),
            ..Default::default()
        };
        last_octet(select(all, &choice, Balancer::RoundRobin, &|| 0, &|_| 0).unwrap())
    };
    let keys: Vec<u64> = (0..2000u32).map(|k| fnv1a(&k.to_be_bytes())).collect();
    let before: Vec<u8> = keys.iter().map(|k| pick(&all, *k)).collect();
    // Stable: the same key, the same endpoint, every time.
    assert_eq!(
        before,
        keys.iter().map(|k| pick(&all, *k)).collect::<Vec<_>>()
    );
    // Spread over every endpoint.
    let mut per = HashMap::<u8, usize>::new();
    for e in &before {
        *per.entry(*e).or_default() += 1;
    }
    assert!(per.values().all(|n| *n > 250), "{per:?}");
    // Endpoint 3 leaves: only its keys move.
    let without: Vec<StateEndpoint> = endpoints(5)
        .into_iter()
        .filter(|e| last_octet(e) != 3)
        .collect();
    for (k, was) in keys.iter().zip(&before) {
        let now = pick(&without, *k);
        if *was != 3 {
            assert_eq!(now, *was, "a key not on the departed endpoint moved");
        }
    }
}

#[test]
fn hash_keys_from_the_request() {
    let mut h = http::HeaderMap::new();
    h.insert("x-user", "alice".parse().unwrap());
    h.append(
        http::header::COOKIE,
        "a=1; session=\"abc\"".parse().unwrap(),
    );
    let ip = IpAddr::from([10, 1, 2, 3]);
    let header = HashOn::Header(http::HeaderName::from_static("x-user"));
    assert_eq!(request_key(&header, &h, None, ip), Some(fnv1a(b"alice")));
    let missing = HashOn::Header(http::HeaderName::from_static("x-other"));
    assert_eq!(request_key(&missing, &h, None, ip), None);
    let cookie = HashOn::Cookie {
        name: "session".into(),
        path: None,
        ttl: None,
    };
    assert_eq!(request_key(&cookie, &h, None, ip), Some(fnv1a(b"\"abc\"")));
    let q = HashOn::QueryParameter("u".into());
    assert_eq!(
        request_key(&q, &h, Some("a=1&u=bob&u=eve"), ip),
        Some(fnv1a(b"bob"))
    );
    assert_eq!(
        request_key(&HashOn::SourceIp, &h, None, ip),
        request_key(&HashOn::SourceIp, &h, None, ip)
    );
}

#[tokio::test(start_paused = true)]
async fn ejected_endpoints_are_skipped_until_the_panic_threshold() {
    let all = endpoints(4);
    let outlier = crate::outlier::Outlier::default();
    let cfg = OutlierConfig {
        consecutive_5xx: 1,
        consecutive_gateway: 0,
        interval: Duration::from_secs(1),
        base_ejection: Duration::from_secs(30),
        max_ejection_percent: 100,
    };
    let now = tokio::time::Instant::now();
    outlier.report(
        IpAddr::from([10, 0, 0, 1]),
        Report::Status(503),
        &cfg,
        4,
        now,
    );
    let choice = Choice {
        outlier: Some(&outlier),
        ..Default::default()
    };
    let seen = spread(&all, &choice, 90);
    assert!(!seen.contains_key(&1), "{seen:?}");
    // Two of four out: still half available, the ejected stay out.
    outlier.report(
        IpAddr::from([10, 0, 0, 2]),
        Report::Status(503),
        &cfg,
        4,
        now,
    );
    let seen = spread(&all, &choice, 90);
    assert_eq!(seen.keys().copied().collect::<HashSet<_>>(), [3, 4].into());
    // Three of four out: below 50 % healthy, Envoy's panic mode uses them all.
    outlier.report(
        IpAddr::from([10, 0, 0, 3]),
        Report::Status(503),
        &cfg,
        4,
        now,
    );
    let seen = spread(&all, &choice, 100);
    assert_eq!(seen.len(), 4, "{seen:?}");
    // Back after the ejection time, with no sweep needed.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(spread(&all, &choice, 100).len(), 4);
    assert_eq!(outlier.ejected_count(), 0);
}

#[test]
fn least_of_two_prefers_the_idle_endpoint() {
    let loads = [5usize, 0, 5, 5];
    let mut rng = rand::rng();
    let mut picks = [0usize; 4];
    for _ in 0..4000 {
        picks[least_of_two(4, |i| loads[i], &mut rng)] += 1;
    }
    // The idle endpoint wins every draw it is in: half of all draws (3 of 6 pairs).
    assert!(picks[1] > 1700, "{picks:?}");
    assert_eq!(least_of_two(1, |_| 9, &mut rng), 0);
}

#[test]
fn in_flight_counts_follow_guards() {
    let f = InFlight::default();
    let ip: std::net::IpAddr = "10.0.0.1".parse().unwrap();
    let a = f.start(ip);
    let b = f.start(ip);
    assert_eq!(f.load(ip), 2);
    drop(a);
    drop(b);
    assert_eq!(f.load(ip), 0);
}

#[test]
fn a_missing_cookie_is_issued_and_leads_back_to_the_same_key() {
    let on = HashOn::Cookie {
        name: "sticky".into(),
        path: Some("/".into()),
        ttl: Some(Duration::from_secs(600)),
    };
    let ip = IpAddr::from([10, 1, 2, 3]);
    let (key, set) = hash_key(&on, &http::HeaderMap::new(), None, ip);
    let set = set.expect("a Set-Cookie for a client without the cookie");
    let text = set.to_str().unwrap();
    assert!(text.starts_with("sticky=\""), "{text}");
    assert!(text.contains("; Max-Age=600; Path=/; HttpOnly"), "{text}");
    // The client sends it back: same key, nothing issued.
    let pair = text.split(';').next().unwrap();
    let mut h = http::HeaderMap::new();
    h.insert(http::header::COOKIE, pair.parse().unwrap());
    assert_eq!(hash_key(&on, &h, None, ip), (key, None));
    // Without a TTL nothing is issued and the request goes anywhere.
    let no_ttl = HashOn::Cookie {
        name: "sticky".into(),
        path: None,
        ttl: None,
    };
    assert_eq!(
        hash_key(&no_ttl, &http::HeaderMap::new(), None, ip),
        (None, None)
    );
}

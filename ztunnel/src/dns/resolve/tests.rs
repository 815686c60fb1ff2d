use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use mesh::state::{LocalConfig, Snapshot};

use super::*;

const CONFIG: &str = "
workloads:
- {name: web-0, namespace: shop, workloadIps: [10.0.1.10], protocol: HBONE, node: n1, services: {shop/db.shop.svc.example.org: {5432: 5432}}}
- {name: web-1, namespace: shop, workloadIps: [10.0.1.11, 'fd00::11'], protocol: HBONE, node: n1, services: {shop/db.shop.svc.example.org: {5432: 5432}}}
- {name: web-2, namespace: shop, workloadIps: [10.0.1.12], protocol: HBONE, node: n1, status: Unhealthy, services: {shop/db.shop.svc.example.org: {5432: 5432}}}
services:
- {name: cart, namespace: shop, hostname: cart.shop.svc.example.org, vips: [10.96.0.20], ports: {80: 8080}}
- {name: db, namespace: shop, hostname: db.shop.svc.example.org, ports: {5432: 5432}}
";

fn snapshot() -> Snapshot {
    Snapshot::new(
        LocalConfig::from_yaml(CONFIG)
            .unwrap()
            .into_model()
            .unwrap(),
    )
}

const ZONE: Zone<'static> = Zone {
    namespace: "shop",
    domain: "example.org",
};

fn query(name: &str, kind: RecordType) -> Message {
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    m
}

fn answers(r: Resolution) -> Vec<String> {
    match r {
        Resolution::Answer(m) => {
            let mut v: Vec<String> = m
                .answers
                .iter()
                .map(|r| match &r.data {
                    RData::A(a) => a.0.to_string(),
                    RData::AAAA(a) => a.0.to_string(),
                    other => format!("{other:?}"),
                })
                .collect();
            v.sort();
            v
        }
        other => panic!("not an answer: {other:?}"),
    }
}

#[test]
fn short_names_expand_with_the_namespace_and_the_cluster_domain() {
    assert_eq!(
        candidates(
            "reviews",
            Zone {
                namespace: "bookinfo",
                domain: "cluster.local"
            }
        ),
        ["reviews", "reviews.bookinfo.svc.cluster.local"]
    );
    assert_eq!(
        candidates("reviews.bookinfo.", ZONE),
        ["reviews.bookinfo", "reviews.bookinfo.svc.example.org"]
    );
    assert_eq!(
        candidates("Reviews.Bookinfo.svc", ZONE),
        ["reviews.bookinfo.svc", "reviews.bookinfo.svc.example.org"]
    );
    assert_eq!(candidates("example.com.au", ZONE), ["example.com.au"]);
    let s = snapshot();
    for name in [
        "cart",
        "cart.shop",
        "cart.shop.svc",
        "cart.shop.svc.example.org.",
    ] {
        assert_eq!(
            answers(resolve(&s, ZONE, &query(name, RecordType::A))),
            ["10.96.0.20"],
            "{name}"
        );
    }
}

#[test]
fn a_headless_service_answers_its_healthy_endpoints_and_its_pods_by_name() {
    let s = snapshot();
    assert_eq!(
        answers(resolve(
            &s,
            ZONE,
            &query("db.shop.svc.example.org", RecordType::A)
        )),
        ["10.0.1.10", "10.0.1.11"]
    );
    assert_eq!(
        answers(resolve(&s, ZONE, &query("db", RecordType::AAAA))),
        ["fd00::11"]
    );
    assert_eq!(
        answers(resolve(
            &s,
            ZONE,
            &query("web-1.db.shop.svc.example.org", RecordType::A)
        )),
        ["10.0.1.11"]
    );
    // Unhealthy, or not an endpoint of that service: not a mesh name.
    for name in [
        "web-2.db.shop.svc.example.org",
        "web-9.db.shop.svc.example.org",
        "web-0.cart.shop.svc.example.org",
    ] {
        assert!(
            matches!(
                resolve(&s, ZONE, &query(name, RecordType::A)),
                Resolution::Forward
            ),
            "{name}"
        );
    }
}

#[test]
fn other_names_go_upstream_and_non_queries_get_no_query_answer() {
    let s = snapshot();
    assert!(matches!(
        resolve(&s, ZONE, &query("example.com", RecordType::A)),
        Resolution::Forward
    ));
    assert!(matches!(
        resolve(&s, ZONE, &query("cart", RecordType::MX)),
        Resolution::Forward
    ));
    // A response sent to the proxy is not answered.
    let mut response = query("cart", RecordType::A);
    response.metadata.message_type = MessageType::Response;
    assert!(matches!(resolve(&s, ZONE, &response), Resolution::Drop));
    // Another opcode: "not implemented", never a query's answer.
    let mut notify = query("cart", RecordType::A);
    notify.metadata.op_code = OpCode::Notify;
    match resolve(&s, ZONE, &notify) {
        Resolution::Answer(m) => assert_eq!(m.metadata.response_code, ResponseCode::NotImp),
        other => panic!("{other:?}"),
    }
}

//! The DNS proxy's own answer path (`ztunnel::dns::resolve` over hickory's message parser),
//! against a fixed snapshot of mesh services: what a pod's datagram can make ztunnel answer.
//!
//! Input: one DNS message as received on 15053. Checks that responses are never answered,
//! other opcodes get NOTIMP, every answer is a response to that very query id, and an answer
//! ztunnel can encode parses back.
#![no_main]

use std::sync::LazyLock;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use libfuzzer_sys::fuzz_target;
use mesh::state::{LocalConfig, Snapshot};
use ztunnel::dns::{candidates, resolve, Resolution, Zone};

/// Services with and without VIPs (headless: answered from endpoints), dual-stack workloads.
const CONFIG: &str = "
workloads:
- {name: web-0, namespace: shop, workloadIps: [10.0.1.10], protocol: HBONE, node: n1, services: {shop/db.shop.svc.cluster.local: {5432: 5432}}}
- {name: web-1, namespace: shop, workloadIps: [10.0.1.11, 'fd00::11'], protocol: HBONE, node: n1, services: {shop/db.shop.svc.cluster.local: {5432: 5432}}}
services:
- {name: cart, namespace: shop, hostname: cart.shop.svc.cluster.local, vips: [10.96.0.20, 'fd00::20'], ports: {80: 8080}}
- {name: db, namespace: shop, hostname: db.shop.svc.cluster.local, ports: {5432: 5432}}
";

static SNAPSHOT: LazyLock<Snapshot> = LazyLock::new(|| {
    let config = LocalConfig::from_yaml(CONFIG).expect("the fixed config parses");
    Snapshot::new(config.into_model().expect("the fixed config converts"))
});

const ZONE: Zone<'static> = Zone {
    namespace: "shop",
    domain: "cluster.local",
};

fuzz_target!(|data: &[u8]| {
    // What the proxy does first: anything that does not parse gets no answer.
    let Ok(query) = Message::from_vec(data) else {
        return;
    };
    for q in &query.queries {
        let expanded = candidates(&q.name().to_ascii(), ZONE);
        assert!(!expanded.is_empty());
    }
    match resolve(&SNAPSHOT, ZONE, &query) {
        Resolution::Drop => {
            assert_eq!(
                query.metadata.message_type,
                MessageType::Response,
                "a query dropped"
            );
        }
        Resolution::Forward => {
            assert_eq!(query.metadata.message_type, MessageType::Query);
            assert_eq!(query.metadata.op_code, OpCode::Query);
        }
        Resolution::Answer(answer) => {
            assert_eq!(
                query.metadata.message_type,
                MessageType::Query,
                "a response answered"
            );
            assert_eq!(answer.metadata.message_type, MessageType::Response);
            assert_eq!(answer.metadata.id, query.metadata.id);
            if query.metadata.op_code != OpCode::Query {
                assert_eq!(answer.metadata.response_code, ResponseCode::NotImp);
            }
            if let Ok(bytes) = answer.to_vec() {
                let back = Message::from_vec(&bytes).expect("our own answer parses");
                assert_eq!(back.metadata.id, query.metadata.id);
                assert_eq!(back.answers.len(), answer.answers.len());
            }
        }
    }
});

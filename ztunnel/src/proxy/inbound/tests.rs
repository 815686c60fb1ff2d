//! What a pod's HBONE listener accepts as a CONNECT target.

use super::foreign_target;
use crate::proxy::PodInfo;

fn pod() -> PodInfo {
    PodInfo {
        uid: "uid".into(),
        name: "reviews-0".into(),
        namespace: "shop".into(),
        service_account: "reviews".into(),
        ip: "10.0.3.5".parse().expect("an IP"),
        netns: "/proc/self/ns/net".into(),
    }
}

#[test]
fn only_the_pods_own_address_is_a_target() {
    let pod = pod();
    // What a waypoint (or any client) sends: the pod's own ip:port.
    assert_eq!(
        foreign_target(&pod, "10.0.3.5:9080".parse().expect("an address")),
        None
    );
    // A service VIP, as a client would send to the service's waypoint, and another pod: this
    // ztunnel is neither's waypoint.
    for target in ["10.96.0.13:9080", "10.0.4.5:9080"] {
        let why = foreign_target(&pod, target.parse().expect("an address"))
            .unwrap_or_else(|| panic!("{target} must be refused"));
        assert!(why.contains(target), "{why}");
        assert!(why.contains("shop/reviews-0"), "{why}");
    }
}

//! RequestAuthentication and HTTPLocalRateLimitPolicy resources are waypoint-scoped like the
//! other `amesh.l7.v1` types: served to the waypoints they target only (never to ztunnels or
//! another Gateway's waypoint), and in the lab's per-waypoint file.

use std::path::Path;

use amesh_proto::{RATE_LIMIT_TYPE_URL, REQUEST_AUTHENTICATION_TYPE_URL};
use controller::translate::l7_local_config;
use controller::xds::{Client, ResourceSet};
use controller::{load_dir, translate, TranslateOptions};

fn translated(case: &str) -> controller::Translated {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(case)
        .join("input");
    let loaded = load_dir(dir);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    translate(&loaded.manifests, &TranslateOptions::default())
}

#[test]
fn served_to_the_targeted_waypoint_only() {
    let waypoint = Client::Waypoint {
        gateway: Some("shop/waypoint".into()),
    };
    let other = Client::Waypoint {
        gateway: Some("other/waypoint".into()),
    };
    for (case, type_url, sent, unsent) in [
        (
            "request_authentication",
            REQUEST_AUTHENTICATION_TYPE_URL,
            "shop/gateway-jwt",
            "shop/legacy-jwt",
        ),
        (
            "rate_limit",
            RATE_LIMIT_TYPE_URL,
            "shop/waypoint-limit",
            "shop/legacy-limit",
        ),
    ] {
        let t = translated(case);
        let set = ResourceSet::from_translated(&t);
        assert!(set.visible(type_url, sent, &waypoint), "{case}: {sent}");
        assert!(!set.visible(type_url, sent, &Client::Ztunnel), "{case}");
        assert!(!set.visible(type_url, sent, &other), "{case}");
        assert!(
            !set.visible(type_url, unsent, &waypoint),
            "{case}: {unsent}"
        );
    }

    let t = translated("request_authentication");
    let local = l7_local_config(&t, "shop", "waypoint");
    let names: Vec<&str> = local
        .authentications
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(names, ["api-jwt", "gateway-jwt"]);
    let t = translated("rate_limit");
    let local = l7_local_config(&t, "shop", "waypoint");
    let names: Vec<&str> = local.rate_limits.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["api-limit", "waypoint-limit"]);
    assert!(l7_local_config(&t, "other", "waypoint")
        .rate_limits
        .is_empty());
}

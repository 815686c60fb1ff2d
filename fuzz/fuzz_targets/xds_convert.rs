//! xDS → node-proxy state (`mesh::state::StateStore::apply_delta`, through `Workload`,
//! `Service` and `Policy::from_proto`): istio `Address` and `Authorization` resources as the
//! control plane sends them.
//!
//! Input: byte 0 picks the type (Address, Authorization, or an unknown one), the rest is the
//! encoded resource body. Checks that the store takes a resource exactly when it converts and
//! carries its own key as name, refuses it under any other name without changing the snapshot,
//! and that an accepted resource can be looked up, and removed, by that name.
#![no_main]

use amesh_fuzz::{content_key, resource};
use amesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use libfuzzer_sys::fuzz_target;
use mesh::state::StateStore;

fuzz_target!(|data: &[u8]| {
    let [selector, body @ ..] = data else {
        return;
    };
    let type_url = match selector % 3 {
        0 => ADDRESS_TYPE_URL,
        1 => AUTHORIZATION_TYPE_URL,
        _ => "type.googleapis.com/istio.workload.Unknown",
    };
    let key = content_key(type_url, body);
    let store = StateStore::new();

    // Under a name that is not its key, a resource is refused and nothing changes.
    let wrong = format!("{}~", key.clone().unwrap_or_default());
    let res = resource(type_url, wrong, "v1".into(), body);
    let before = store.snapshot().version();
    assert!(store.apply_delta(type_url, vec![res], &[]).is_err());
    assert_eq!(
        store.snapshot().version(),
        before,
        "a refused update changed the state"
    );

    let Some(key) = key else {
        // A body that does not convert is refused under any name.
        let res = resource(type_url, String::new(), "v1".into(), body);
        assert!(store.apply_delta(type_url, vec![res], &[]).is_err());
        return;
    };
    let res = resource(type_url, key.clone(), "v1".into(), body);
    if let Err(e) = store.apply_delta(type_url, vec![res], &[]) {
        panic!("a resource that converts, named {key:?}, was refused: {e}");
    }
    let snapshot = store.snapshot();
    let found = if type_url == ADDRESS_TYPE_URL {
        snapshot.workload_by_uid(&key).is_some() || snapshot.service(&key).is_some()
    } else {
        snapshot.policy(&key).is_some()
    };
    assert!(found, "accepted {key:?} but cannot look it up");
    // Lookups by address must not trip over whatever the resource carried.
    for w in snapshot.workloads() {
        for ip in &w.addresses {
            let _ = snapshot.workload_by_ip(*ip);
            let _ = snapshot.policies_for(w).count();
        }
    }
    for s in snapshot.services() {
        for vip in &s.vips {
            let _ = snapshot.service_by_vip(vip.address);
        }
        let _ = snapshot.endpoints(&s.key());
        let _ = snapshot.services_by_host(&s.hostname);
    }
    let _ = snapshot.to_model();

    // Removal by the same name takes it away again.
    assert!(store
        .apply_delta(type_url, Vec::new(), &[key.clone()])
        .is_ok());
    let snapshot = store.snapshot();
    assert!(
        snapshot.workload_by_uid(&key).is_none()
            && snapshot.service(&key).is_none()
            && snapshot.policy(&key).is_none(),
        "removed {key:?} but it is still there"
    );
});

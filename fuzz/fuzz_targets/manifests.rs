//! The controller's manifests loader and translation (`controller::manifests::load_yaml`, then
//! `controller::translate::translate`): one YAML file of the folder source, as an operator
//! (or anyone who may write there) left it.
//!
//! Input: the file's text. Checks that every document either loads or is reported, and that
//! everything the translation makes for ztunnel is taken by ztunnel's own store: a resource
//! the node proxy refused would NACK the whole push, every other workload's update with it.
#![no_main]

use amesh_fuzz::resource;
use amesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use controller::manifests::load_yaml;
use controller::translate::{translate, TranslateOptions};
use libfuzzer_sys::fuzz_target;
use mesh::state::StateStore;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let loaded = load_yaml("fuzz.yaml", text);
    for e in &loaded.errors {
        assert!(!e.to_string().is_empty());
    }
    let translated = translate(&loaded.manifests, &TranslateOptions::default());
    let store = StateStore::new();
    let addresses = translated
        .addresses
        .iter()
        .map(|(name, a)| {
            resource(
                ADDRESS_TYPE_URL,
                name.clone(),
                "1".into(),
                &a.encode_to_vec(),
            )
        })
        .collect();
    if let Err(e) = store.apply_delta(ADDRESS_TYPE_URL, addresses, &[]) {
        panic!("ztunnel refuses the controller's addresses: {e}");
    }
    let policies = translated
        .authorizations
        .iter()
        .map(|(name, p)| {
            resource(
                AUTHORIZATION_TYPE_URL,
                name.clone(),
                "1".into(),
                &p.encode_to_vec(),
            )
        })
        .collect();
    if let Err(e) = store.apply_delta(AUTHORIZATION_TYPE_URL, policies, &[]) {
        panic!("ztunnel refuses the controller's authorizations: {e}");
    }
});

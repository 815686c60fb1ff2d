//! The CNI node-agent protocol: the JSON line ztunnel reads from the plugin
//! (`ztunnel::cni::agent::parse_request`), and the plugin's own parse of the runtime's stdin
//! configuration and `CNI_ARGS` (`ztunnel::cni::plugin::run` for commands that stop before any
//! I/O, `parse_cni_args`).
//!
//! Input: the text (invalid UTF-8 is refused before either parser, as both read text). Checks
//! that an accepted request survives a round trip through its own encoding, that the plugin
//! accepts exactly a configuration of type `amesh-cni`, and that every error it prints is JSON.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use ztunnel::cni::agent::parse_request;
use ztunnel::cni::plugin::{parse_cni_args, run, NetConf};
use ztunnel::cni::AgentRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    // ztunnel's side: one request line.
    match parse_request(text) {
        Ok(req) => {
            let line = serde_json::to_string(&req).expect("a request encodes");
            let again: AgentRequest = parse_request(&line).expect("its own encoding parses");
            assert_eq!(again, req);
        }
        Err(message) => assert!(message.starts_with("malformed request")),
    }

    // The plugin's side: stdin, for commands that never reach the socket or the netns.
    let conf: Option<NetConf> = serde_json::from_str(text).ok();
    for command in ["CHECK", "ADD", "VERSION", "BOGUS"] {
        let env = HashMap::from([("CNI_COMMAND".to_string(), command.to_string())]);
        match run(&env, text) {
            Ok(out) => {
                if command == "VERSION" {
                    assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
                } else {
                    assert_eq!(
                        command, "CHECK",
                        "{command} succeeded without its environment"
                    );
                    let conf = conf
                        .as_ref()
                        .expect("CHECK passed a config that does not parse");
                    assert_eq!(conf.plugin_type, "amesh-cni");
                }
            }
            Err((error, version)) => {
                let printed: serde_json::Value =
                    serde_json::from_str(&error.to_json(&version)).expect("errors print as JSON");
                assert_eq!(printed["code"], error.code);
            }
        }
    }

    // CNI_ARGS as the runtime passes them.
    for (k, v) in parse_cni_args(text) {
        assert_eq!(k.trim(), k);
        assert_eq!(v.trim(), v);
    }
});

//! `LOG_FORMAT=json` across the mesh (#21): the bookinfo lab (controller or file config,
//! ztunnels, the waypoint, the lab's apps) started with `LOG_FORMAT=json` in every process's
//! environment, a request through the waypoint, then every line of every process's log file
//! is one flat JSON object (`timestamp`, `level`, `target`, `message` and scalar fields at the
//! top level), none holds an ANSI escape, and the access lines carry Istio's field names: the
//! ztunnel's `src.*`/`dst.*`, the waypoint's those of Istio's default JSON access log.

use e2e::http::{request, Req};
use e2e::{addr, wait_for, MeshLab};

const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage";

/// Every log line of the lab's processes: (file name, parsed line).
fn log_lines(m: &MeshLab) -> Vec<(String, serde_json::Map<String, serde_json::Value>)> {
    let dir = m.lab.run_dir().join("logs");
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        if bytes.contains(&0x1b) {
            problems.push(format!("{name}: ESC byte"));
        }
        for line in String::from_utf8_lossy(&bytes).lines() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(serde_json::Value::Object(obj)) => out.push((name.clone(), obj)),
                _ => problems.push(format!("{name}: not a JSON object: {line}")),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    out
}

fn text<'a>(line: &'a serde_json::Map<String, serde_json::Value>, key: &str) -> &'a str {
    line.get(key).and_then(|v| v.as_str()).unwrap_or("")
}

#[test]
fn every_process_logs_flat_json_with_istios_access_fields() {
    // Read by every amesh binary; the lab's processes inherit the test's environment.
    std::env::set_var("LOG_FORMAT", "json");
    let m = MeshLab::up_example("bookinfo", 2);
    let productpage = m
        .lab
        .state()
        .pods
        .iter()
        .find(|p| p.namespace == "bookinfo" && p.name.starts_with("productpage"))
        .map(|p| p.name.clone())
        .expect("a productpage pod");
    let reviews = addr(m.vip("reviews"), 9080);
    let reply = request(&m.lab, &productpage, reviews, Req::get("/reviews")).unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    // The access lines are written when the request and the connections end.
    wait_for(
        "the waypoint's and a ztunnel's access lines",
        std::time::Duration::from_secs(10),
        || {
            let lines = log_lines(&m);
            let has = |msg: &str| {
                lines
                    .iter()
                    .any(|(_, l)| text(l, "target") == "access" && text(l, "message") == msg)
            };
            has("request") && has("connection complete")
        },
    );
    let lines = log_lines(&m);
    let mut files = std::collections::BTreeSet::new();
    for (file, line) in &lines {
        files.insert(file.clone());
        for key in ["timestamp", "level", "target", "message"] {
            assert!(
                line.get(key).is_some_and(|v| v.is_string()),
                "{file}: no {key} string at the top level: {line:?}"
            );
        }
        for (k, v) in line {
            assert!(
                !v.is_object() && !v.is_array(),
                "{file}: {k} is not a scalar: {line:?}"
            );
        }
    }
    // The controller (unless the config is a file), both ztunnels, the waypoint, the apps.
    assert!(files.len() >= 4, "log files: {files:?}");

    let request_line = lines
        .iter()
        .map(|(_, l)| l)
        .find(|l| {
            text(l, "target") == "access"
                && text(l, "message") == "request"
                && text(l, "path") == "/reviews"
        })
        .expect("the waypoint's access line for GET /reviews");
    for key in [
        "method",
        "path",
        "protocol",
        "response_code",
        "response_flags",
        "bytes_received",
        "bytes_sent",
        "duration",
        "upstream_host",
        "downstream_remote_address",
        "request_id",
        "authority",
        "user_agent",
        "route_name",
        "source_principal",
        "destination_service",
    ] {
        assert!(
            request_line.contains_key(key),
            "no {key} in {request_line:?}"
        );
    }
    assert_eq!(request_line["response_code"], 200, "{request_line:?}");
    assert!(request_line["duration"].is_u64(), "{request_line:?}");
    assert_eq!(text(request_line, "method"), "GET");
    assert_eq!(text(request_line, "source_principal"), PRODUCTPAGE);

    let connection_line = lines
        .iter()
        .map(|(_, l)| l)
        .find(|l| {
            text(l, "target") == "access"
                && text(l, "message") == "connection complete"
                && text(l, "src.identity") == PRODUCTPAGE
        })
        .expect("a ztunnel access line for productpage's connection");
    for key in [
        "src.addr",
        "src.workload",
        "src.namespace",
        "src.identity",
        "dst.addr",
        "dst.workload",
        "dst.namespace",
        "dst.identity",
        "direction",
        "bytes_sent",
        "bytes_recv",
        "duration",
    ] {
        assert!(
            connection_line.contains_key(key),
            "no {key} in {connection_line:?}"
        );
    }
    assert!(
        text(connection_line, "duration").ends_with("ms"),
        "{connection_line:?}"
    );
}

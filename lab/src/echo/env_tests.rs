use std::collections::BTreeMap;

use super::*;

fn parse(vars: &[(&str, &str)]) -> Result<AppEnv, EnvError> {
    let map: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    AppEnv::parse(|name| map.get(name).cloned())
}

fn pod(yaml: &str) -> Pod {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn nothing_set_is_the_plain_echo_app() {
    assert_eq!(parse(&[]).unwrap(), AppEnv::default());
    // Empty values are unset, as a manifest's `value: ""` would be meant.
    assert_eq!(
        parse(&[(CALLS, ""), (FAIL_PERCENT, " ")]).unwrap(),
        AppEnv::default()
    );
}

#[test]
fn every_setting() {
    let env = parse(&[
        (
            CALLS,
            "http://details:9080/details/0, http://reviews.bookinfo:9080,http://10.0.0.1/x?y=1,http://[fd00::1]:81?q",
        ),
        (CALL_TIMEOUT_MS, "2500"),
        (FAIL_PERCENT, "33"),
        (FAIL_STATUS, "500"),
        (DELAY_MS, "120"),
        (STATIC, "/.well-known/jwks.json"),
        (STATIC_BODY, "{\"keys\":[]}"),
    ])
    .unwrap();
    let hops: Vec<(&str, u16, &str, &str)> = env
        .calls
        .iter()
        .map(|h| {
            (
                h.host.as_str(),
                h.port,
                h.authority.as_str(),
                h.path.as_str(),
            )
        })
        .collect();
    assert_eq!(
        hops,
        [
            ("details", 9080, "details:9080", "/details/0"),
            ("reviews.bookinfo", 9080, "reviews.bookinfo:9080", "/"),
            ("10.0.0.1", 80, "10.0.0.1", "/x?y=1"),
            ("fd00::1", 81, "[fd00::1]:81", "/?q"),
        ]
    );
    assert_eq!(env.calls[0].url, "http://details:9080/details/0");
    assert_eq!(env.call_timeout, Duration::from_millis(2500));
    assert_eq!(env.fail_percent, 33);
    assert_eq!(env.fail_status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(env.delay, Duration::from_millis(120));
    assert_eq!(
        env.static_doc,
        Some(StaticDoc {
            path: "/.well-known/jwks.json".into(),
            body: "{\"keys\":[]}".into(),
            content_type: "application/json".into(),
        })
    );
}

#[test]
fn bad_values_name_the_variable() {
    for (vars, says) in [
        (vec![(FAIL_PERCENT, "101")], "ECHO_FAIL_PERCENT=\"101\""),
        (vec![(FAIL_PERCENT, "12.5")], "ECHO_FAIL_PERCENT=\"12.5\""),
        (vec![(FAIL_STATUS, "99")], "ECHO_FAIL_STATUS=\"99\""),
        (vec![(DELAY_MS, "-1")], "ECHO_DELAY_MS"),
        (vec![(CALL_TIMEOUT_MS, "0")], "ECHO_CALL_TIMEOUT_MS"),
        (vec![(CALLS, "https://details:9080")], "not an http:// URL"),
        (vec![(CALLS, "http://details:x/")], "\"x\" is not a port"),
        (vec![(CALLS, "http://:80/")], "names no host"),
        (vec![(STATIC, "/jwks")], "ECHO_STATIC_BODY is not"),
        (vec![(STATIC_BODY, "{}")], "ECHO_STATIC is not"),
        (vec![(STATIC, "jwks"), (STATIC_BODY, "{}")], "starts with /"),
    ] {
        let err = parse(&vars).unwrap_err().to_string();
        assert!(err.contains(says), "{vars:?}: {err}");
    }
}

#[test]
fn a_long_delay_is_capped_at_a_minute() {
    assert_eq!(
        parse(&[(DELAY_MS, "999999999")]).unwrap().delay,
        Duration::from_secs(60)
    );
}

#[test]
fn the_pods_plain_values_reach_the_app() {
    let p = pod(r#"
metadata: {name: productpage-abc, namespace: bookinfo}
spec:
  containers:
  - name: productpage
    env:
    - {name: ECHO_CALLS, value: "http://details:9080/details"}
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: EMPTY}
  - name: sidecar
    env:
    - {name: ECHO_CALLS, value: "http://details:9080/details"}
    - {name: OTHER, value: "1"}
"#);
    assert_eq!(
        pod_env(&p).unwrap(),
        [
            (
                "ECHO_CALLS".to_string(),
                "http://details:9080/details".to_string()
            ),
            ("EMPTY".into(), "".into()),
            ("OTHER".into(), "1".into()),
        ]
    );
}

#[test]
fn value_from_for_the_apps_own_variables_is_an_error() {
    let p = pod(r#"
metadata: {name: web, namespace: ns}
spec:
  containers:
  - name: app
    env:
    - {name: ECHO_FAIL_PERCENT, valueFrom: {configMapKeyRef: {name: c, key: k}}}
"#);
    let err = pod_env(&p).unwrap_err().to_string();
    assert_eq!(
        err,
        "pod ns/web, container app: env ECHO_FAIL_PERCENT uses valueFrom, which the lab cannot resolve; give it a plain value"
    );
}

#[test]
fn containers_that_disagree_and_bad_values_name_the_pod() {
    let p = pod(r#"
metadata: {name: web, namespace: ns}
spec:
  containers:
  - {name: a, env: [{name: ECHO_DELAY_MS, value: "1"}]}
  - {name: b, env: [{name: ECHO_DELAY_MS, value: "2"}]}
"#);
    let err = pod_env(&p).unwrap_err().to_string();
    assert!(
        err.starts_with("pod ns/web: env ECHO_DELAY_MS is \"1\""),
        "{err}"
    );
    let p = pod(r#"
metadata: {name: web, namespace: ns}
spec:
  containers:
  - {name: a, env: [{name: ECHO_FAIL_STATUS, value: "abc"}]}
"#);
    let err = pod_env(&p).unwrap_err().to_string();
    assert!(
        err.starts_with("pod ns/web: ECHO_FAIL_STATUS=\"abc\""),
        "{err}"
    );
}

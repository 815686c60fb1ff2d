use super::*;
use amesh_proto::amesh::l7::v1 as pb;

fn policy(action: pb::authorization::Action, rules: Vec<pb::Rule>) -> L7Policy {
    L7Policy::from_proto(pb::Authorization {
        name: "p".into(),
        namespace: "bookinfo".into(),
        action: action as i32,
        targets: vec![pb::TargetRef {
            kind: "Service".into(),
            namespace: String::new(),
            name: "reviews".into(),
        }],
        rules,
        dry_run: false,
    })
    .unwrap()
}

fn attrs<'a>(
    principal: &'a str,
    method: &'a str,
    path: &'a str,
    headers: &'a HeaderMap,
) -> RequestAttrs<'a> {
    RequestAttrs {
        principal,
        namespace: principal
            .split("/ns/")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or(""),
        source_ip: "10.0.0.5".parse().unwrap(),
        method,
        path,
        host: "reviews.bookinfo.svc.cluster.local:9080",
        port: 9080,
        headers,
        auth: None,
    }
}

const PRODUCTPAGE: &str = "cluster.local/ns/bookinfo/sa/bookinfo-productpage";
const OTHER: &str = "cluster.local/ns/legacy/sa/default";

#[test]
fn allow_get_from_productpage_only() {
    let allow = policy(
        pb::authorization::Action::Allow,
        vec![pb::Rule {
            from: vec![pb::Source {
                principals: vec![PRODUCTPAGE.into()],
                ..Default::default()
            }],
            to: vec![pb::Operation {
                methods: vec!["GET".into()],
                ..Default::default()
            }],
            when: vec![],
        }],
    );
    let h = HeaderMap::new();
    let cases = [
        (PRODUCTPAGE, "GET", Decision::Allow),
        (PRODUCTPAGE, "POST", Decision::Deny(None)),
        (OTHER, "GET", Decision::Deny(None)),
    ];
    for (who, method, want) in cases {
        assert_eq!(
            evaluate([&allow], &attrs(who, method, "/", &h)),
            want,
            "{who} {method}"
        );
    }
    // No policy applies: allowed.
    assert_eq!(
        evaluate([], &attrs(OTHER, "POST", "/", &h)),
        Decision::Allow
    );
}

#[test]
fn deny_wins_and_string_forms() {
    let deny = policy(
        pb::authorization::Action::Deny,
        vec![pb::Rule {
            from: vec![pb::Source {
                namespaces: vec!["leg*".into()],
                ..Default::default()
            }],
            to: vec![pb::Operation {
                paths: vec!["*/admin".into(), "/private/*".into()],
                ..Default::default()
            }],
            when: vec![pb::Condition {
                key: "request.headers[x-token]".into(),
                values: vec![],
                not_values: vec!["secret".into()],
            }],
        }],
    );
    let allow_all = policy(pb::authorization::Action::Allow, vec![pb::Rule::default()]);
    let h = HeaderMap::new();
    let mut with_token = HeaderMap::new();
    with_token.insert("x-token", "secret".parse().unwrap());
    let d = |who, path, headers| evaluate([&deny, &allow_all], &attrs(who, "GET", path, headers));
    assert_eq!(
        d(OTHER, "/x/admin", &h),
        Decision::Deny(Some("bookinfo/p".into()))
    );
    assert_eq!(
        d(OTHER, "/private/a", &h),
        Decision::Deny(Some("bookinfo/p".into()))
    );
    assert_eq!(d(OTHER, "/public", &h), Decision::Allow);
    assert_eq!(d(OTHER, "/x/admin", &with_token), Decision::Allow);
    assert_eq!(d(PRODUCTPAGE, "/x/admin", &h), Decision::Allow);
}

#[test]
fn allow_without_rules_denies_and_unsupported_fails_closed() {
    let nothing = policy(pb::authorization::Action::Allow, vec![]);
    let h = HeaderMap::new();
    assert_eq!(
        evaluate([&nothing], &attrs(PRODUCTPAGE, "GET", "/", &h)),
        Decision::Deny(None)
    );
    let unsupported = |action| {
        policy(
            action,
            vec![pb::Rule {
                when: vec![pb::Condition {
                    key: "connection.sni".into(),
                    values: vec!["a.example".into()],
                    not_values: vec![],
                }],
                ..Default::default()
            }],
        )
    };
    let allow = unsupported(pb::authorization::Action::Allow);
    let deny = unsupported(pb::authorization::Action::Deny);
    assert_eq!(
        evaluate([&allow], &attrs(PRODUCTPAGE, "GET", "/", &h)),
        Decision::Deny(None)
    );
    assert!(matches!(
        evaluate([&deny], &attrs(PRODUCTPAGE, "GET", "/", &h)),
        Decision::Deny(Some(_))
    ));
}

fn verified(principal: &str, claims: serde_json::Value) -> crate::l7::jwt::Verified {
    crate::l7::jwt::Verified {
        principal: principal.into(),
        claims: claims.as_object().unwrap().clone(),
    }
}

#[test]
fn request_principals_and_claims() {
    let h = HeaderMap::new();
    let require_principal = policy(
        pb::authorization::Action::Allow,
        vec![pb::Rule {
            from: vec![pb::Source {
                request_principals: vec!["*".into()],
                ..Default::default()
            }],
            ..Default::default()
        }],
    );
    let token = verified(
        "https://issuer/alice",
        serde_json::json!({ "sub": "alice", "aud": ["api"], "azp": "cli",
                            "groups": ["dev", "admin"], "org": { "team": "blue" } }),
    );
    let mut with = attrs(PRODUCTPAGE, "GET", "/", &h);
    with.auth = Some(&token);
    let without = attrs(PRODUCTPAGE, "GET", "/", &h);
    assert_eq!(evaluate([&require_principal], &with), Decision::Allow);
    assert_eq!(
        evaluate([&require_principal], &without),
        Decision::Deny(None),
        "no token: no request principal"
    );

    let when = |key: &str, values: &[&str], not_values: &[&str]| {
        policy(
            pb::authorization::Action::Allow,
            vec![pb::Rule {
                when: vec![pb::Condition {
                    key: key.into(),
                    values: values.iter().map(|v| v.to_string()).collect(),
                    not_values: not_values.iter().map(|v| v.to_string()).collect(),
                }],
                ..Default::default()
            }],
        )
    };
    let allowed = |p: &L7Policy, a: &RequestAttrs<'_>| evaluate([p], a) == Decision::Allow;
    assert!(allowed(
        &when("request.auth.principal", &["https://issuer/*"], &[]),
        &with
    ));
    assert!(
        allowed(&when("request.auth.claims[groups]", &["admin"], &[]), &with),
        "any element of a list"
    );
    assert!(!allowed(
        &when("request.auth.claims[groups]", &["root"], &[]),
        &with
    ));
    assert!(!allowed(
        &when("request.auth.claims[groups]", &[], &["dev"]),
        &with
    ));
    assert!(
        allowed(
            &when("request.auth.claims[org][team]", &["blue"], &[]),
            &with
        ),
        "nested"
    );
    assert!(!allowed(
        &when("request.auth.claims[org][team]", &["red"], &[]),
        &with
    ));
    assert!(allowed(
        &when("request.auth.audiences", &["api"], &[]),
        &with
    ));
    assert!(allowed(
        &when("request.auth.presenter", &["cli"], &[]),
        &with
    ));
    assert!(!allowed(
        &when("request.auth.claims[groups]", &["admin"], &[]),
        &without
    ));

    let deny_alice = policy(
        pb::authorization::Action::Deny,
        vec![pb::Rule {
            from: vec![pb::Source {
                not_request_principals: vec!["*/bob".into()],
                ..Default::default()
            }],
            ..Default::default()
        }],
    );
    assert!(matches!(
        evaluate([&deny_alice], &with),
        Decision::Deny(Some(_))
    ));
    assert!(
        L7Policy::from_proto(pb::Authorization {
            name: "x".into(),
            namespace: "ns".into(),
            rules: vec![pb::Rule {
                when: vec![pb::Condition {
                    key: "request.auth.claims[]".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
        .is_err(),
        "an empty claim name is refused"
    );
}

#[test]
fn bad_input_is_an_error_naming_the_field() {
    let e = L7Policy::from_proto(pb::Authorization {
        name: "bad".into(),
        namespace: "ns".into(),
        rules: vec![pb::Rule {
            from: vec![pb::Source {
                ip_blocks: vec!["10.0.0.0/33".into()],
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("ns/bad") && e.contains("rules[0].from.ipBlocks"),
        "{e}"
    );
    let e = L7Policy::from_proto(pb::Authorization {
        name: "bad".into(),
        namespace: "ns".into(),
        rules: vec![pb::Rule {
            when: vec![pb::Condition {
                key: "nonsense".into(),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("when.key"), "{e}");
}

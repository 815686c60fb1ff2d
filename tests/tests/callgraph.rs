//! The bookinfo example as an application, not only servers: its pods' echo apps call their
//! next hops (`ECHO_CALLS` in the manifests' container env), so one request to productpage
//! comes back with the whole call graph (productpage → details + reviews → ratings), every hop
//! through the mesh: resolved by name from the pod, routed by the namespace's waypoint (which
//! reports each edge with the caller's identity), the request id and trace passed along.

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::http::{request, Req};
use e2e::{addr, metric_sum, wait_for, MeshLab};
use lab::echo::{EchoReply, Hop};

/// Every reply of the graph, depth first, with the hop that reached it.
fn walk<'a>(reply: &'a EchoReply, out: &mut Vec<(&'a Hop, &'a EchoReply)>) {
    for hop in &reply.calls {
        if let Some(r) = &hop.reply {
            out.push((hop, r));
            walk(r, out);
        }
    }
}

/// The trace id of a W3C `traceparent`.
fn trace_id(reply: &EchoReply) -> String {
    let tp = reply.headers.get("traceparent").expect("a traceparent");
    tp.split('-').nth(1).expect("a trace id").to_string()
}

#[test]
fn a_request_to_productpage_returns_the_call_graph_through_the_mesh() {
    let mut m = MeshLab::up_example("bookinfo", 2);
    // A client in the ambient namespace, as `kubectl run` would make one.
    let pod: k8s_openapi::api::core::v1::Pod = serde_yaml::from_str(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: bookinfo, labels: {app: client}}\nspec:\n  containers: [{name: c, image: x, ports: [{containerPort: 8080}]}]\n",
    )
    .unwrap();
    m.lab.create_pod(pod).expect("the client pod starts");
    let productpage = addr(m.vip("productpage"), 9080);
    let get = |user: Option<&str>| {
        let mut req = Req::get("/productpage");
        if let Some(u) = user {
            req = req.header("end-user", u);
        }
        request(&m.lab, "client", productpage, req)
    };
    wait_for(
        "the client's requests to reach productpage",
        Duration::from_secs(20),
        || get(None).map(|r| r.status == 200).unwrap_or(false),
    );

    // jason: reviews v2 by the HTTPRoute's header match, which calls ratings.
    let r = get(Some("jason")).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let page = r.echo().expect("productpage's echo reply");
    assert!(page.pod.starts_with("productpage-v1-"), "{}", page.pod);
    let shape: Vec<(String, u16, String)> = page
        .calls
        .iter()
        .map(|h| {
            let pod = h.reply.as_ref().map(|r| r.pod.clone()).unwrap_or_default();
            (h.url.clone(), h.status, pod)
        })
        .collect();
    assert_eq!(shape.len(), 2, "{shape:?}");
    assert_eq!(shape[0].0, "http://details:9080/details/0");
    assert_eq!(shape[0].1, 200, "{:?}", page.calls[0]);
    assert!(shape[0].2.starts_with("details-v1-"), "{shape:?}");
    assert_eq!(shape[1].0, "http://reviews:9080/reviews/0");
    assert_eq!(shape[1].1, 200, "{:?}", page.calls[1]);
    let reviews = page.calls[1].reply.as_ref().unwrap();
    assert!(reviews.pod.starts_with("reviews-v2-"), "{}", reviews.pod);
    assert_eq!(reviews.headers.get("end-user").unwrap(), "jason");
    assert_eq!(reviews.calls.len(), 1, "{:?}", reviews.calls);
    let ratings = &reviews.calls[0];
    assert_eq!(
        (ratings.url.as_str(), ratings.status),
        ("http://ratings:9080/ratings/0", 200),
        "{ratings:?}"
    );
    assert!(ratings
        .reply
        .as_ref()
        .unwrap()
        .pod
        .starts_with("ratings-v1-"));

    // One request id and one trace over the whole graph: the waypoint named the first request
    // and each app passed the headers on; each hop's authority is the name the app called.
    let mut all = Vec::new();
    walk(&page, &mut all);
    assert_eq!(all.len(), 3, "productpage → details, reviews → ratings");
    let id = page.headers.get("x-request-id").expect("an x-request-id");
    let trace = trace_id(&page);
    for (hop, reply) in &all {
        assert_eq!(reply.headers.get("x-request-id"), Some(id), "{}", reply.pod);
        assert_eq!(trace_id(reply), trace, "{}", reply.pod);
        assert_eq!(
            reply.authority,
            hop.url
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap(),
            "{}",
            reply.pod
        );
    }

    // Without end-user the split decides; v1 makes no call. Over a few requests both shapes
    // may show; whatever version answered, its calls are as its manifest says.
    for _ in 0..10 {
        let page = get(None).unwrap().echo().expect("echo reply");
        let reviews = page.calls[1].reply.as_ref().expect("reviews answered");
        let expected = if reviews.version == "v1" { 0 } else { 1 };
        assert_eq!(reviews.calls.len(), expected, "{}", reviews.pod);
    }

    // Each edge went through the waypoint, reported with the caller's own identity.
    let metrics = m.waypoint_metrics("bookinfo", "waypoint");
    let edges: BTreeSet<(&str, &str)> = [
        ("bookinfo-productpage", "details"),
        ("bookinfo-productpage", "reviews"),
        ("bookinfo-reviews", "ratings"),
    ]
    .into_iter()
    .filter(|(sa, service)| {
        metric_sum(
            &metrics,
            "istio_requests_total",
            &[
                "reporter=\"waypoint\"",
                &format!("source_principal=\"spiffe://cluster.local/ns/bookinfo/sa/{sa}\""),
                &format!("destination_service=\"{service}.bookinfo.svc.cluster.local\""),
                "response_code=\"200\"",
            ],
        ) >= 1.0
    })
    .collect();
    assert_eq!(edges.len(), 3, "edges seen: {edges:?} in\n{metrics}");
}

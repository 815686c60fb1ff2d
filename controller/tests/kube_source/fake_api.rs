//! A fake Kubernetes API server speaking the real list/watch protocol over plain HTTP/1.1:
//! `GET <collection>` answers a `<Kind>List` with its `metadata.resourceVersion`;
//! `GET <collection>?watch=true&resourceVersion=N...` answers a chunked stream of
//! newline-delimited watch events, fed by the test through a channel; a collection not served
//! (a CRD not installed) answers 404 with a `Status`; `POST` of a `TokenReview` answers with
//! the status the test set for that token ([`TokenReviews`]); namespaced Secrets and ConfigMaps
//! are read, created and replaced, and ServiceAccounts, Services, Deployments and Gateways read
//! and server-side applied, as the API server does ([`Objects`], in `fake_objects.rs`).

// Shared by several test binaries; each uses a part of it.
#![allow(dead_code)]

#[path = "fake_objects.rs"]
mod objects;

// Only some of the binaries sharing this file look at the recorded requests.
#[allow(unused_imports)]
pub use objects::{Objects, Recorded, APPLY};

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How long a test waits for anything the source should do.
pub const DEADLINE: Duration = Duration::from_secs(10);

type Body = BoxBody<Bytes, Infallible>;

/// Every collection the controller reads: URL path, list kind, apiVersion.
pub const COLLECTIONS: [(&str, &str, &str); 12] = [
    ("/api/v1/namespaces", "NamespaceList", "v1"),
    ("/api/v1/nodes", "NodeList", "v1"),
    ("/api/v1/pods", "PodList", "v1"),
    ("/api/v1/services", "ServiceList", "v1"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSliceList",
        "discovery.k8s.io/v1",
    ),
    ("/api/v1/serviceaccounts", "ServiceAccountList", "v1"),
    (
        "/apis/gateway.networking.k8s.io/v1/gateways",
        "GatewayList",
        "gateway.networking.k8s.io/v1",
    ),
    (
        "/apis/gateway.networking.k8s.io/v1/httproutes",
        "HTTPRouteList",
        "gateway.networking.k8s.io/v1",
    ),
    (
        "/apis/gateway.networking.k8s.io/v1/grpcroutes",
        "GRPCRouteList",
        "gateway.networking.k8s.io/v1",
    ),
    (
        "/apis/security.istio.io/v1/authorizationpolicies",
        "AuthorizationPolicyList",
        "security.istio.io/v1",
    ),
    (
        "/apis/security.istio.io/v1/peerauthentications",
        "PeerAuthenticationList",
        "security.istio.io/v1",
    ),
    (
        "/apis/security.istio.io/v1/requestauthentications",
        "RequestAuthenticationList",
        "security.istio.io/v1",
    ),
];

/// One watch request the server got. Events sent go out as they are; dropping it ends the
/// response, as the API server's watch timeout does.
pub struct Watch {
    /// The `resourceVersion` the client asked to watch from.
    pub resource_version: String,
    /// The `labelSelector` of the request (percent-decoded), empty if none.
    pub label_selector: String,
    events: mpsc::UnboundedSender<Value>,
}

impl Watch {
    /// Sends one watch event, `{"type": ..., "object": ...}`.
    pub fn send(&self, kind: &str, object: Value) {
        let event = json!({"type": kind, "object": object});
        self.events.send(event).expect("the client is watching");
    }
}

/// The server side of one collection.
struct Collection {
    list_kind: &'static str,
    api_version: &'static str,
    served: AtomicBool,
    /// resourceVersion and items of the next list.
    list: Mutex<(String, Vec<Value>)>,
    lists: AtomicUsize,
    watches: mpsc::UnboundedSender<Watch>,
}

/// The test's handle on one collection.
pub struct Served {
    collection: Arc<Collection>,
    watches: mpsc::UnboundedReceiver<Watch>,
}

impl Served {
    /// What the next list returns.
    pub fn set_list(&self, resource_version: &str, items: Vec<Value>) {
        *self.collection.list.lock() = (resource_version.to_owned(), items);
    }

    /// Starts (or stops) serving the collection, as installing (or removing) a CRD does.
    pub fn serve(&self, served: bool) {
        self.collection.served.store(served, Ordering::SeqCst);
    }

    /// How many lists the server answered.
    pub fn lists(&self) -> usize {
        self.collection.lists.load(Ordering::SeqCst)
    }

    /// The next watch request the client makes.
    pub async fn next_watch(&mut self) -> Watch {
        tokio::time::timeout(DEADLINE, self.watches.recv())
            .await
            .expect("the client starts a watch in time")
            .expect("the server is running")
    }
}

/// Path of the TokenReview API.
pub const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// The server side of TokenReview: per token, the `status` to answer.
#[derive(Default)]
pub struct TokenReviews {
    answers: Mutex<HashMap<String, Value>>,
    /// Bodies of the reviews asked for, in order.
    requests: Mutex<Vec<Value>>,
    /// Answer every review with this HTTP error instead (e.g. 403 for missing RBAC).
    failing: Mutex<Option<(StatusCode, String)>>,
}

impl TokenReviews {
    /// The `status` a review of `token` gets; tokens not set are not authenticated.
    pub fn answer(&self, token: &str, status: Value) {
        self.answers.lock().insert(token.to_owned(), status);
    }

    /// The review requests received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().clone()
    }

    /// Fails every review with `code` and a `Status` carrying `message`, or (None) stops.
    pub fn fail(&self, error: Option<(StatusCode, &str)>) {
        *self.failing.lock() = error.map(|(c, m)| (c, m.to_owned()));
    }

    fn review(&self, body: &[u8]) -> Response<Body> {
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        self.requests.lock().push(request.clone());
        if let Some((code, message)) = self.failing.lock().clone() {
            let status = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": "Forbidden", "details": {}, "code": code.as_u16()
            });
            return json_response(code, &status);
        }
        let token = request["spec"]["token"].as_str().unwrap_or_default();
        let status =
            self.answers.lock().get(token).cloned().unwrap_or_else(
                || json!({"authenticated": false, "error": "invalid bearer token"}),
            );
        let mut answer = request.clone();
        answer["status"] = status;
        json_response(StatusCode::CREATED, &answer)
    }
}

/// The server's URL, a handle per collection path and the TokenReview handle; every
/// collection starts served, with an empty list at resourceVersion 1.
pub async fn start() -> (String, HashMap<&'static str, Served>, Arc<TokenReviews>) {
    let api = serve().await;
    (api.url, api.collections, api.reviews)
}

/// A running fake API server and the test's handles on it.
pub struct FakeApi {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// A handle per collection path (list and watch).
    pub collections: HashMap<&'static str, Served>,
    /// TokenReview answers and requests.
    pub reviews: Arc<TokenReviews>,
    /// Namespaced Secrets, ConfigMaps, ServiceAccounts, Services, Deployments and Gateways.
    pub objects: Arc<Objects>,
}

impl FakeApi {
    /// A kube-rs client of this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }
}

/// Starts the server, as [`start`] does, with every handle.
pub async fn serve() -> FakeApi {
    let reviews = Arc::new(TokenReviews::default());
    let objects = Arc::new(Objects::default());
    let mut handles = HashMap::new();
    let mut collections = HashMap::new();
    for (path, list_kind, api_version) in COLLECTIONS {
        let (watches_tx, watches) = mpsc::unbounded_channel();
        let collection = Arc::new(Collection {
            list_kind,
            api_version,
            served: AtomicBool::new(true),
            list: Mutex::new(("1".to_owned(), Vec::new())),
            lists: AtomicUsize::new(0),
            watches: watches_tx,
        });
        collections.insert(path, collection.clone());
        handles.insert(
            path,
            Served {
                collection,
                watches,
            },
        );
    }
    let collections = Arc::new(collections);
    let server_reviews = reviews.clone();
    let server_objects = objects.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let collections = collections.clone();
            let reviews = server_reviews.clone();
            let objects = server_objects.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let collections = collections.clone();
                    let reviews = reviews.clone();
                    let objects = objects.clone();
                    async move {
                        if let Some(route) = objects::Route::parse(req.method(), req.uri().path()) {
                            let path = req.uri().path().to_owned();
                            let query = req.uri().query().unwrap_or_default().to_owned();
                            let content_type = req
                                .headers()
                                .get(hyper::header::CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            return Ok::<_, Infallible>(objects.handle(
                                route,
                                &path,
                                &query,
                                &content_type,
                                &body,
                            ));
                        }
                        if req.method() == hyper::Method::POST && req.uri().path() == TOKEN_REVIEWS
                        {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            return Ok::<_, Infallible>(reviews.review(&body));
                        }
                        Ok::<_, Infallible>(handle(&collections, req))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    FakeApi {
        url: format!("http://{addr}"),
        collections: handles,
        reviews,
        objects,
    }
}

fn handle(
    collections: &HashMap<&'static str, Arc<Collection>>,
    req: Request<Incoming>,
) -> Response<Body> {
    let query: HashMap<&str, &str> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    let collection = collections
        .get(req.uri().path())
        .filter(|c| c.served.load(Ordering::SeqCst));
    let Some(collection) = collection else {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "the server could not find the requested resource",
            "reason": "NotFound", "details": {}, "code": 404
        });
        return json_response(StatusCode::NOT_FOUND, &status);
    };
    if matches!(query.get("watch"), Some(&"true" | &"1")) {
        let (events_tx, events) = mpsc::unbounded_channel::<Value>();
        let watch = Watch {
            resource_version: query.get("resourceVersion").unwrap_or(&"").to_string(),
            label_selector: percent_decoded(query.get("labelSelector").unwrap_or(&"")),
            events: events_tx,
        };
        // The test may not be waiting for this collection's watches: that is fine.
        let _ = collection.watches.send(watch);
        let lines = tokio_stream(events).map(|event| {
            let mut line = serde_json::to_vec(&event).unwrap();
            line.push(b'\n');
            Ok::<_, Infallible>(Frame::data(Bytes::from(line)))
        });
        return Response::builder()
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(lines)))
            .unwrap();
    }
    collection.lists.fetch_add(1, Ordering::SeqCst);
    let (resource_version, items) = collection.list.lock().clone();
    let list = json!({
        "kind": collection.list_kind,
        "apiVersion": collection.api_version,
        "metadata": {"resourceVersion": resource_version},
        "items": items,
    });
    json_response(StatusCode::OK, &list)
}

/// `%XX` escapes of a query value decoded (what a label selector needs: `/`, `!`, `=`).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(body.to_string()))))
        .unwrap()
}

fn tokio_stream(mut rx: mpsc::UnboundedReceiver<Value>) -> impl futures::Stream<Item = Value> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

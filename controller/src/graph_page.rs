//! The controller's live graph page (`--graph-addr`, off by default): a separate HTTP listener
//! serving a small page (HTML and JS embedded in the binary: no CDN, no external fetch) that
//! polls `/graph.json` and redraws the service graph of [`crate::graph`].
//!
//! Every `interval` the controller scrapes `:15020/metrics` of the pods its manifests show as
//! ztunnels (`app=ztunnel`) and waypoints (`gateway.networking.k8s.io/gateway-name`), each with
//! a timeout and a body limit, all at once. It keeps the last [`HISTORY`] scrapes (rates over a
//! window are the difference of two of them) and the last [`DENIALS`] denials: an edge whose
//! DENY-flagged connections or 403 answers grew between two scrapes, on the proxies read in
//! both (a proxy's first exposition is its whole past, not recent). A proxy that does not
//! answer keeps its last exposition (so its counters do not seem to restart) and is listed
//! with its error on the page. Memory is bounded by those two rings and the proxies' own
//! label sets.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::graph::{Counters, Graph, NodeId};
use crate::manifests::Manifests;

/// Scrapes kept: with the default 5 s interval, 5 minutes.
pub const HISTORY: usize = 60;
/// Denials kept for the page.
pub const DENIALS: usize = 100;
/// Largest `/metrics` body read from one proxy.
const MAX_BODY: usize = 16 << 20;
/// Longest wait for one proxy's answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// The proxies' stats port.
const STATS_PORT: u16 = 15020;

const PAGE: &str = include_str!("graph_page.html");

/// A proxy the controller scrapes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ScrapeTarget {
    /// `ztunnel` or `waypoint`.
    pub kind: &'static str,
    /// `namespace/pod`.
    pub pod: String,
    pub ip: IpAddr,
}

/// One recent denial: an edge's denied count grew between two scrapes.
#[derive(Clone, Debug, Serialize)]
pub struct Denial {
    /// When the scrape that saw it ended, milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub source: NodeId,
    pub destination: NodeId,
    pub services: Vec<String>,
    /// How many more than at the scrape before.
    pub count: f64,
}

struct Scrape {
    at: Instant,
    counters: Counters,
}

#[derive(Default)]
struct State {
    history: VecDeque<Scrape>,
    denials: VecDeque<Denial>,
    /// The last error of each proxy that failed its last scrape.
    errors: BTreeMap<String, String>,
    /// Each proxy's last good exposition.
    last_text: BTreeMap<ScrapeTarget, String>,
    targets: Vec<ScrapeTarget>,
    scrapes: u64,
}

/// The page's data.
#[derive(Serialize)]
struct GraphJson<'a> {
    graph: Graph,
    svg: String,
    denials: Vec<&'a Denial>,
    errors: &'a BTreeMap<String, String>,
    targets: &'a [ScrapeTarget],
    scrapes: u64,
}

/// The ztunnel and waypoint pods of `m` with an IP.
pub fn targets(m: &Manifests) -> Vec<ScrapeTarget> {
    let mut out = Vec::new();
    for pod in m.pods.values() {
        let labels = pod.metadata.labels.as_ref();
        let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        let kind = if label("app") == Some("ztunnel") {
            "ztunnel"
        } else if label("gateway.networking.k8s.io/gateway-name").is_some() {
            "waypoint"
        } else {
            continue;
        };
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let Some(ip) = ip else { continue };
        out.push(ScrapeTarget {
            kind,
            pod: format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.metadata.name.as_deref().unwrap_or("")
            ),
            ip,
        });
    }
    out.sort();
    out
}

/// Serves the page on `listener` and scrapes every `interval`, until the task is aborted.
pub fn spawn(
    listener: TcpListener,
    manifests: watch::Receiver<Arc<Manifests>>,
    interval: Duration,
) -> JoinHandle<()> {
    let state = Arc::new(Mutex::new(State::default()));
    let scraper = tokio::spawn(scrape_loop(state.clone(), manifests, interval));
    tokio::spawn(async move {
        // The scraper ends with the server: aborting this task drops the guard.
        let _scraper = AbortOnDrop(scraper);
        serve(listener, state).await;
    })
}

struct AbortOnDrop(JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn scrape_loop(
    state: Arc<Mutex<State>>,
    manifests: watch::Receiver<Arc<Manifests>>,
    interval: Duration,
) {
    type HttpClient = hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >;
    let client: HttpClient =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let targets = targets(&manifests.borrow());
        let results = futures::future::join_all(targets.iter().map(|t| {
            let client = client.clone();
            async move { (t.clone(), scrape(&client, t).await) }
        }))
        .await;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        state
            .lock()
            .record(targets, results, Instant::now(), now_ms);
    }
}

impl State {
    /// Folds one round of scrapes in: each proxy's exposition (or its error), the counters of
    /// all, the denials that are new since the round before, and the round into the history.
    fn record(
        &mut self,
        targets: Vec<ScrapeTarget>,
        results: Vec<(ScrapeTarget, Result<String, String>)>,
        at: Instant,
        now_ms: u64,
    ) {
        let s = self;
        let before = s.last_text.clone();
        s.errors.clear();
        for (t, got) in results {
            match got {
                Ok(text) => {
                    s.last_text.insert(t, text);
                }
                Err(e) => {
                    s.errors.insert(format!("{} {}", t.kind, t.pod), e);
                }
            }
        }
        // Proxies gone from the manifests are forgotten.
        s.last_text.retain(|t, _| targets.contains(t));
        let mut counters = Counters::default();
        let mut bad = Vec::new();
        for (t, text) in &s.last_text {
            if let Err(e) = counters.add_exposition(text) {
                bad.push((format!("{} {}", t.kind, t.pod), e.to_string()));
            }
        }
        s.errors.extend(bad);
        // Recent denials: what grew between the last round and this one on the proxies read
        // in both. A proxy read for the first time brings its whole past, which is not recent;
        // one that failed this round kept its last exposition, so nothing of it grew.
        let common: Vec<&ScrapeTarget> = (s.last_text.keys())
            .filter(|t| before.contains_key(*t))
            .collect();
        let fold = |texts: &BTreeMap<ScrapeTarget, String>| {
            let mut c = Counters::default();
            for t in &common {
                // A bad exposition is reported above; here it only adds nothing.
                let _ = c.add_exposition(&texts[*t]);
            }
            c
        };
        let mut new_denials = Vec::new();
        if !common.is_empty() {
            let g = Graph::between(Some(&fold(&before)), &fold(&s.last_text), 1.0);
            for e in g.edges {
                let grew = e.window.tcp_denied + e.window.requests_denied;
                if grew > 0.0 {
                    new_denials.push(Denial {
                        time_ms: now_ms,
                        source: e.source,
                        destination: e.destination,
                        services: e.services,
                        count: grew,
                    });
                }
            }
        }
        s.denials.extend(new_denials);
        while s.denials.len() > DENIALS {
            s.denials.pop_front();
        }
        s.history.push_back(Scrape { at, counters });
        while s.history.len() > HISTORY {
            s.history.pop_front();
        }
        s.targets = targets;
        s.scrapes += 1;
    }

    /// The graph of the last round, with rates over the newest earlier round at least
    /// `window` seconds older (else the oldest kept); empty before the first round.
    fn graph(&self, window: f64) -> Graph {
        let Some(last) = self.history.back() else {
            // Before the first scrape: an empty graph (the page says so), not an error.
            return Graph::between(None, &Counters::default(), 0.0);
        };
        let first = self
            .history
            .iter()
            .rev()
            .skip(1)
            .find(|p| last.at.duration_since(p.at).as_secs_f64() >= window)
            .or_else(|| self.history.front().filter(|p| !std::ptr::eq(*p, last)));
        match first {
            Some(p) => Graph::between(
                Some(&p.counters),
                &last.counters,
                last.at.duration_since(p.at).as_secs_f64(),
            ),
            None => Graph::between(None, &last.counters, 0.0),
        }
    }
}

async fn scrape(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    t: &ScrapeTarget,
) -> Result<String, String> {
    let uri = format!("http://{}/metrics", SocketAddr::new(t.ip, STATS_PORT));
    let req = Request::get(&uri)
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("{uri}: {e}"))?;
    let fetch = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("GET {uri}: {e}"))?;
        if resp.status() != StatusCode::OK {
            return Err(format!("GET {uri}: status {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("GET {uri}: body: {e}"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| format!("GET {uri}: body is not UTF-8"))
    };
    match tokio::time::timeout(SCRAPE_TIMEOUT, fetch).await {
        Ok(r) => r,
        Err(_) => Err(format!("GET {uri}: no answer in {SCRAPE_TIMEOUT:?}")),
    }
}

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    crate::page_server::serve(listener, "graph page", move |req| answer(&state, req)).await
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = "no-store".parse() {
        r.headers_mut().insert(hyper::header::CACHE_CONTROL, v);
    }
    r
}

/// `?window=SECONDS` of the request, default 30.
fn window(req: &Request<hyper::body::Incoming>) -> Result<f64, String> {
    let Some(q) = req.uri().query() else {
        return Ok(30.0);
    };
    for (k, v) in q.split('&').filter_map(|kv| kv.split_once('=')) {
        if k == "window" {
            return v
                .parse::<f64>()
                .ok()
                .filter(|w| w.is_finite() && *w > 0.0)
                .ok_or_else(|| format!("window={v:?}: expected a positive number of seconds"));
        }
    }
    Ok(30.0)
}

fn answer(state: &Mutex<State>, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    let path = req.uri().path();
    if path == "/" || path == "/index.html" {
        return reply(StatusCode::OK, "text/html; charset=utf-8", PAGE);
    }
    if !matches!(path, "/graph.json" | "/graph.svg" | "/graph.dot") {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    }
    let window = match window(req) {
        Ok(w) => w,
        Err(e) => return reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    };
    let s = state.lock();
    let graph = s.graph(window);
    match path {
        "/graph.svg" => reply(StatusCode::OK, "image/svg+xml", graph.to_svg()),
        "/graph.dot" => reply(StatusCode::OK, "text/vnd.graphviz", graph.to_dot()),
        _ => {
            let json = GraphJson {
                svg: graph.to_svg(),
                graph,
                denials: s.denials.iter().rev().collect(),
                errors: &s.errors,
                targets: &s.targets,
                scrapes: s.scrapes,
            };
            match serde_json::to_vec(&json) {
                Ok(body) => reply(StatusCode::OK, "application/json", body),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                ),
            }
        }
    }
}

#[cfg(test)]
#[path = "graph_page_tests.rs"]
mod tests;

//! The service graph against the real data path, on one bookinfo lab (examples/bookinfo: its
//! waypoint, STRICT details, ratings only for reviews):
//!
//! - the controller's live graph page (`--graph-addr`) in a real headless chromium (Debian's,
//!   driven by tests/browser/page_driver.mjs through playwright-core): the nodes and edges the
//!   traffic made appear; new traffic (a new edge, and a connection ratings' policy refuses)
//!   shows up without a reload, the refused edge with its denials; no console error, no failed
//!   request. Only where the control plane is the controller (the page is the controller's);
//!   with the local-file control plane that part is skipped, saying so.
//! - `amesh --lab <id> graph -o json|svg|dot|png`: the same edges, the refused one with its
//!   denials, in every control-plane and capture mode; and in cluster mode (the lab's
//!   stand-in API server) the same edges and denials.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e::http::{request, Req};
use e2e::lab::mesh::ControlPlane;
use e2e::{addr, wait_for, MeshLab};
use serde_json::Value;

/// The port of the lab's graph page (on the lab's root netns address).
const GRAPH_PORT: u16 = 15090;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// An HTTP GET from `from` to `to`: the status, or the connection's error.
fn get(mesh: &MeshLab, from: &str, to: SocketAddr) -> Result<u16, String> {
    request(&mesh.lab, from, to, Req::get("/")).map(|r| r.status)
}

/// A real chromium on one page, in the lab's root netns (where the page's address is), driven
/// by tests/browser/page_driver.mjs over its stdin and stdout.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Browser {
    fn open(netns: &str, url: &str) -> Browser {
        let dir = browser_dir();
        assert!(
            dir.join("node_modules/playwright-core").is_dir(),
            "{} has no node_modules/playwright-core: run `bash scripts/setup.sh` (it installs \
             chromium, nodejs and the driver's npm package)",
            dir.display()
        );
        assert!(
            Path::new("/usr/bin/chromium").exists(),
            "/usr/bin/chromium is missing: run `bash scripts/setup.sh`"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "node"])
            .arg(dir.join("page_driver.mjs"))
            .arg(url)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node (run `bash scripts/setup.sh`)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Browser {
            child,
            stdin,
            lines,
        }
    }

    /// What the page shows now (see page_driver.mjs).
    fn snapshot(&mut self) -> Value {
        writeln!(self.stdin, "snapshot").expect("write to the page driver");
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the page driver answers a snapshot (its errors are on stderr)");
        serde_json::from_str(&line).expect("the page driver's JSON")
    }

    /// Snapshots until `check` holds; panics after `limit` with the last snapshot.
    fn wait_until(&mut self, what: &str, limit: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.snapshot();
            if check(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for the page to show {what}; it shows: {s:#}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // "quit" closes chromium and the profile; a driver that does not go is killed (the
        // browser is its child and playwright closes it on the driver's exit).
        let _ = writeln!(self.stdin, "quit");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn has_node(s: &Value, name: &str) -> bool {
    s["nodes"]
        .as_array()
        .is_some_and(|n| n.iter().any(|n| n == name))
}

/// The page's edge `src -> dst`, from the SVG, if drawn.
fn svg_edge<'a>(s: &'a Value, src: &str, dst: &str) -> Option<&'a Value> {
    s["edges"]
        .as_array()?
        .iter()
        .find(|e| e["source"] == src && e["destination"] == dst)
}

/// The edge table's row `src -> dst`, if listed.
fn row<'a>(s: &'a Value, src: &str, dst: &str) -> Option<&'a Value> {
    s["rows"]
        .as_array()?
        .iter()
        .find(|e| e["source"] == src && e["destination"] == dst)
}

fn denied(e: Option<&Value>) -> f64 {
    e.and_then(|e| e["denied"].as_f64()).unwrap_or(0.0)
}

const PRODUCTPAGE: &str = "bookinfo/productpage-v1";
const DETAILS: &str = "bookinfo/details-v1";
const REVIEWS_V1: &str = "bookinfo/reviews-v1";
const RATINGS: &str = "bookinfo/ratings-v1";

#[test]
fn graph_page_and_cli_follow_the_traffic() {
    let controller = ControlPlane::from_env() == ControlPlane::Controller;
    let bookinfo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bookinfo");
    let mesh = MeshLab::up_dir_with(&bookinfo, 2, |m| m.graph_port = Some(GRAPH_PORT));

    let (productpage, _) = mesh.pod_prefixed("productpage");
    let (reviews_v1, _) = mesh.pod_prefixed("reviews-v1");
    let (_, ratings_ip) = mesh.pod_prefixed("ratings");
    let details = addr(mesh.vip("details"), 9080);
    let ratings = addr(mesh.vip("ratings"), 9080);
    let ratings_pod = addr(ratings_ip, 9080);

    // 1. First traffic: productpage -> details (through the waypoint), three requests.
    wait_for(
        "productpage reaches details",
        Duration::from_secs(10),
        || get(&mesh, &productpage, details) == Ok(200),
    );
    for _ in 0..2 {
        assert_eq!(get(&mesh, &productpage, details), Ok(200));
    }

    let page = lab_graph_page(&mesh);
    let mut browser = match (&page, controller) {
        (Some(url), true) => Some(Browser::open(&mesh.lab.state().root_netns, url)),
        _ => {
            eprintln!(
                "graph_page: the browser part is skipped: the control plane is the local file \
                 (AMESH_LAB_CONTROL_PLANE=file), and the graph page is the controller's"
            );
            None
        }
    };
    if let Some(b) = browser.as_mut() {
        let s = b.wait_until("productpage -> details", Duration::from_secs(30), |s| {
            has_node(s, PRODUCTPAGE)
                && has_node(s, DETAILS)
                && svg_edge(s, PRODUCTPAGE, DETAILS).is_some()
                && row(s, PRODUCTPAGE, DETAILS).is_some()
        });
        assert!(
            svg_edge(&s, REVIEWS_V1, RATINGS).is_none(),
            "no reviews -> ratings traffic yet: {s:#}"
        );
        assert!(
            svg_edge(&s, PRODUCTPAGE, RATINGS).is_none(),
            "no productpage -> ratings pod traffic yet: {s:#}"
        );
        let r = row(&s, PRODUCTPAGE, DETAILS).expect("row");
        assert_eq!(r["cells"][3], "mtls", "{r:#}");
        assert_eq!(denied(Some(r)), 0.0, "{r:#}");
    }

    // 2. New traffic: reviews-v1 -> ratings (allowed: a new edge), and productpage -> a
    //    ratings pod directly (refused by ratings-from-reviews: a denied connection).
    assert_eq!(get(&mesh, &reviews_v1, ratings), Ok(200));
    let refused = get(&mesh, &productpage, ratings_pod);
    assert!(
        refused.is_err(),
        "ratings' policy must refuse productpage: {refused:?}"
    );

    if let Some(b) = browser.as_mut() {
        let before = b.snapshot()["updates"].as_u64().unwrap_or(0);
        let s = b.wait_until(
            "the new edge and the denied one",
            Duration::from_secs(30),
            |s| {
                svg_edge(s, REVIEWS_V1, RATINGS).is_some()
                    && denied(svg_edge(s, PRODUCTPAGE, RATINGS)) >= 1.0
                    && denied(row(s, PRODUCTPAGE, RATINGS)) >= 1.0
                    && s["denials"].as_array().is_some_and(|d| {
                        d.iter()
                            .any(|d| d["source"] == PRODUCTPAGE && d["destination"] == RATINGS)
                    })
            },
        );
        // Updated in place: the page polled and redrew, it was not reloaded.
        assert!(s["updates"].as_u64().unwrap_or(0) > before, "{s:#}");
        assert_eq!(s["mark"], "first-load", "the page was reloaded: {s:#}");
        assert_eq!(s["navigations"], 1, "{s:#}");
        assert_eq!(denied(svg_edge(&s, REVIEWS_V1, RATINGS)), 0.0, "{s:#}");
        // The edge's row counts its recent denials; the allowed edges' rows none.
        let r = row(&s, PRODUCTPAGE, RATINGS).expect("row");
        assert!(r["recentDenials"].as_f64() >= Some(1.0), "{r:#}");
        let r = row(&s, REVIEWS_V1, RATINGS).expect("row");
        assert_eq!(r["recentDenials"], 0.0, "{r:#}");
        let label = svg_edge(&s, PRODUCTPAGE, RATINGS).expect("edge")["label"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(label.contains("denied"), "{label}");
        assert_eq!(s["scrapeErrors"], serde_json::json!([]), "{s:#}");
        assert_eq!(s["problems"], serde_json::json!([]), "{s:#}");
        eprintln!(
            "graph page: {} nodes, {} edges, {} recent denials, {} updates; status: {}",
            s["nodes"].as_array().map_or(0, Vec::len),
            s["edges"].as_array().map_or(0, Vec::len),
            s["denials"].as_array().map_or(0, Vec::len),
            s["updates"],
            s["status"]
        );
    }
    drop(browser);
    // The page's endpoints refuse what they do not serve, saying why.
    if let (Some(a), true) = (e2e::lab::mesh::graph_addr(mesh.lab.state()), controller) {
        let root = mesh.lab.state().root_netns.clone();
        let get = |path: &'static str| {
            e2e::lab::netns::run_in(&root, move || e2e::lab::mesh::http_get(a, path))
                .expect("enter the root netns")
                .expect("the page answers")
        };
        let (status, body) = get("/graph.json?window=abc");
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("window=\"abc\""), "{body}");
        assert_eq!(get("/nope").0, 404);
        let (status, dot) = get("/graph.dot?window=5");
        assert_eq!(status, 200);
        assert!(
            dot.contains(&format!("\"{REVIEWS_V1}\" -> \"{RATINGS}\"")),
            "{dot}"
        );
    }

    // 3. `amesh graph`: `--since 0s` reads the proxies once (totals); `--since 2s` asks the
    //    controller's page where it runs, else reads the proxies twice, 2 s apart.
    let id = mesh.lab.state().id.to_string();
    for since in ["0s", "2s"] {
        let g = amesh_json(&id, since);
        let e = cli_edge(&g, PRODUCTPAGE, DETAILS);
        assert!(e["total"]["requests"].as_f64() >= Some(3.0), "{e:#}");
        assert_eq!(e["security"], "mtls", "{e:#}");
        assert_eq!(e["denied"], 0.0, "{e:#}");
        let e = cli_edge(&g, REVIEWS_V1, RATINGS);
        assert!(e["total"]["requests"].as_f64() >= Some(1.0), "{e:#}");
        assert_eq!(e["denied"], 0.0, "{e:#}");
        let e = cli_edge(&g, PRODUCTPAGE, RATINGS);
        assert!(e["denied"].as_f64() >= Some(1.0), "{e:#}");
        assert_eq!(e["allowed"], 0.0, "{e:#}");
        if since == "0s" {
            assert_eq!(g["window_seconds"], 0.0, "{g:#}");
        } else {
            assert!(g["window_seconds"].as_f64() > Some(0.0), "{g:#}");
        }
    }
    // Cluster mode: the same edges and denials through the lab's stand-in API server (pods
    // by label, the pod proxy to each proxy's :15020/metrics), amesh run in the root netns.
    let state = mesh.lab.state();
    let out = Command::new("ip")
        .args(["netns", "exec", &state.root_netns])
        .arg(e2e::amesh_binary())
        .args(["graph", "-o", "json", "--since", "0s"])
        .env("KUBECONFIG", e2e::lab::mesh::kubeconfig_path(state))
        .output()
        .expect("run amesh in the root netns");
    assert!(
        out.status.success(),
        "amesh graph (cluster mode) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cluster: Value = serde_json::from_slice(&out.stdout).expect("graph JSON");
    let decisions = |g: &Value| -> Vec<(String, String, f64)> {
        let mut v: Vec<_> = (g["edges"].as_array().into_iter().flatten())
            .map(|e| {
                (
                    e["source"]["name"].as_str().unwrap_or_default().to_string(),
                    e["destination"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    e["denied"].as_f64().unwrap_or(-1.0),
                )
            })
            .collect();
        v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        v
    };
    assert_eq!(decisions(&cluster), decisions(&amesh_json(&id, "0s")));

    let svg = String::from_utf8(amesh(&id, &["-o", "svg", "--since", "0s"])).expect("UTF-8");
    assert!(svg.starts_with("<svg "), "{svg}");
    for (src, dst) in [(PRODUCTPAGE, DETAILS), (REVIEWS_V1, RATINGS)] {
        assert!(
            svg.contains(&format!(
                "data-source=\"{src}\" data-destination=\"{dst}\" data-denied=\"0\""
            )),
            "{src} -> {dst} in {svg}"
        );
    }
    assert!(
        svg.contains(&format!(
            "data-source=\"{PRODUCTPAGE}\" data-destination=\"{RATINGS}\" data-denied=\"1"
        )),
        "{svg}"
    );
    let dot = String::from_utf8(amesh(&id, &["-o", "dot", "--since", "0s"])).expect("UTF-8");
    assert!(dot.starts_with("digraph amesh {"), "{dot}");
    let line = dot
        .lines()
        .find(|l| l.contains(&format!("\"{PRODUCTPAGE}\" -> \"{RATINGS}\"")))
        .unwrap_or_else(|| panic!("no productpage -> ratings edge in {dot}"));
    assert!(
        line.contains("denied") && line.contains("color=red"),
        "{line}"
    );
    let png = amesh(&id, &["-o", "png", "--since", "0s"]);
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {} bytes",
        png.len()
    );
}

/// `amesh --lab <id> graph <args>`'s stdout; panics with stderr when it fails.
fn amesh(id: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(e2e::amesh_binary())
        .args(["--lab", id, "graph"])
        .args(args)
        .output()
        .expect("run amesh");
    assert!(
        out.status.success(),
        "amesh graph {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn amesh_json(id: &str, since: &str) -> Value {
    serde_json::from_slice(&amesh(id, &["-o", "json", "--since", since])).expect("graph JSON")
}

/// Edge `src -> dst` of `amesh graph -o json`.
fn cli_edge<'a>(g: &'a Value, src: &str, dst: &str) -> &'a Value {
    g["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["source"]["name"] == src && e["destination"]["name"] == dst)
        .unwrap_or_else(|| panic!("no edge {src} -> {dst} in {g:#}"))
}

/// The page's URL, when the lab runs it.
fn lab_graph_page(mesh: &MeshLab) -> Option<String> {
    e2e::lab::mesh::graph_addr(mesh.lab.state()).map(|a| format!("http://{a}/"))
}

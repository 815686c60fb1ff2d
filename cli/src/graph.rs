//! `amesh graph`: the service graph (workloads and services, edges with connections or requests
//! per second, error rate, p99, mTLS or plaintext, allowed and denied) from every ztunnel's and
//! waypoint's Prometheus metrics (`:15020/metrics`), with the model of `controller::graph`, the
//! one the controller's live page draws.
//!
//! Rates need two readings of the proxies' counters. Where the controller's page runs (a lab
//! with `--graph-port`) it has kept readings and is asked (`/graph.json?window=`); otherwise
//! the proxies are read twice, `--since` apart. Output: SVG (amesh's own drawing), DOT, JSON,
//! or PNG through Graphviz's `dot`.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use controller::graph::{Counters, Graph};
use tokio::time::Instant;

use crate::args::{GraphArgs, GraphOutput, TargetArgs};
use crate::target::{Component, Target, STATS_PORT};

/// The longest `--since`: amesh waits that long between its two readings.
const MAX_SINCE: Duration = Duration::from_secs(600);

pub async fn run(target: &TargetArgs, args: GraphArgs) -> anyhow::Result<()> {
    let since = mesh::env::go_duration(&args.since).ok_or_else(|| {
        anyhow!(
            "--since {:?}: expected a duration such as 0s, 30s or 5m",
            args.since
        )
    })?;
    if since > MAX_SINCE {
        bail!(
            "--since {}: at most {}m (amesh waits that long between its two readings)",
            args.since,
            MAX_SINCE.as_secs() / 60
        );
    }
    let target = Target::open(target).await?;
    let graph = match from_controller(&target, since).await? {
        Some(g) => g,
        None => Rendered::Model(sample(&target, since).await?),
    };
    let text = match args.output {
        GraphOutput::Svg => graph.svg(),
        GraphOutput::Dot => graph.dot(),
        GraphOutput::Json => graph.json()?,
        GraphOutput::Png => {
            let png = dot_to_png(&graph.dot())?;
            std::io::stdout()
                .write_all(&png)
                .context("writing the PNG to stdout")?;
            return Ok(());
        }
    };
    print!("{text}");
    Ok(())
}

/// A graph as the model (read from the proxies) or as the controller's page drew it.
enum Rendered {
    Model(Graph),
    /// The page's `/graph.json` `graph` object, `/graph.svg` and `/graph.dot` for one window.
    Controller {
        json: serde_json::Value,
        svg: String,
        dot: String,
    },
}

impl Rendered {
    fn svg(&self) -> String {
        match self {
            Rendered::Model(g) => g.to_svg(),
            Rendered::Controller { svg, .. } => svg.clone(),
        }
    }

    fn dot(&self) -> String {
        match self {
            Rendered::Model(g) => g.to_dot(),
            Rendered::Controller { dot, .. } => dot.clone(),
        }
    }

    fn json(&self) -> anyhow::Result<String> {
        let mut s = match self {
            Rendered::Model(g) => serde_json::to_string_pretty(g)?,
            Rendered::Controller { json, .. } => serde_json::to_string_pretty(json)?,
        };
        s.push('\n');
        Ok(s)
    }
}

/// The graph from the controller's live page, where a lab runs it; `None` elsewhere (a
/// cluster: the page's port is the operator's choice, not discoverable) and for `--since 0s`.
async fn from_controller(target: &Target, since: Duration) -> anyhow::Result<Option<Rendered>> {
    let Some(state) = target.lab() else {
        return Ok(None);
    };
    let Some(addr) = lab::mesh::graph_addr(state) else {
        return Ok(None);
    };
    if since.is_zero() {
        return Ok(None);
    }
    let Some(controller) = target.controllers().await?.into_iter().next() else {
        return Ok(None);
    };
    let window = format!("window={}", since.as_secs_f64());
    let get = |path: String| {
        let c = controller.clone();
        async move {
            let body = target.get(&c, addr.port(), &path).await?;
            String::from_utf8(body).map_err(|_| anyhow!("GET {path}: the answer is not UTF-8"))
        }
    };
    // Three GETs of one page: each answers from the readings it has then, so the three may
    // differ by a reading; the JSON, SVG and DOT printed are each whole.
    let json = get(format!("/graph.json?{window}")).await?;
    let json: serde_json::Value =
        serde_json::from_str(&json).context("the controller's /graph.json is not JSON")?;
    let graph = json
        .get("graph")
        .cloned()
        .ok_or_else(|| anyhow!("the controller's /graph.json has no `graph`"))?;
    Ok(Some(Rendered::Controller {
        json: graph,
        svg: get(format!("/graph.svg?{window}")).await?,
        dot: get(format!("/graph.dot?{window}")).await?,
    }))
}

/// Reads every ztunnel and waypoint; again after `since` unless it is zero; the graph between.
async fn sample(target: &Target, since: Duration) -> anyhow::Result<Graph> {
    let mut proxies = target.ztunnels().await?;
    proxies.extend(target.waypoints().await?);
    if proxies.is_empty() {
        bail!("no ztunnel or waypoint runs in {}", target.describe());
    }
    let first = read_all(target, &proxies).await?;
    if since.is_zero() {
        return Ok(Graph::between(None, &first.0, 0.0));
    }
    tokio::time::sleep_until(first.1 + since).await;
    let second = read_all(target, &proxies).await?;
    let seconds = second.1.duration_since(first.1).as_secs_f64();
    Ok(Graph::between(Some(&first.0), &second.0, seconds))
}

/// One reading of every proxy's metrics, and when it started. A proxy that does not answer is
/// reported on stderr and left out (its edges then lack its side); none answering is an error.
async fn read_all(target: &Target, proxies: &[Component]) -> anyhow::Result<(Counters, Instant)> {
    let at = Instant::now();
    let mut counters = Counters::default();
    let mut answered = 0;
    for p in proxies {
        let text = match target.get(p, STATS_PORT, "/metrics").await {
            Ok(body) => String::from_utf8_lossy(&body).into_owned(),
            Err(e) => {
                eprintln!("amesh graph: leaving out {} {}: {e:#}", p.kind, p.key());
                continue;
            }
        };
        counters
            .add_exposition(&text)
            .with_context(|| format!("the metrics of {} {}", p.kind, p.key()))?;
        answered += 1;
    }
    if answered == 0 {
        bail!("no ztunnel or waypoint of {} answered", target.describe());
    }
    Ok((counters, at))
}

/// Graphviz's `dot -Tpng` on `dot`.
fn dot_to_png(dot: &str) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new("dot")
        .arg("-Tpng")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow!(
                "-o png runs Graphviz's `dot`, which could not be started ({e}): install \
                 graphviz (apt-get install graphviz), or use -o svg, which needs nothing"
            )
        })?;
    let mut stdin = child.stdin.take().context("dot's stdin")?;
    let input = dot.to_owned();
    // Written from another thread: dot may fill its stdout pipe before it has read all input.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().context("running dot -Tpng")?;
    writer
        .join()
        .map_err(|_| anyhow!("writing to dot panicked"))?
        .context("writing the graph to dot")?;
    if !out.status.success() {
        bail!(
            "dot -Tpng failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

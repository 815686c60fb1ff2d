//! ztunnel configuration from environment variables. Names follow Istio's ztunnel where the
//! meaning is the same, so existing DaemonSet manifests carry over.

use mesh::control::with_scheme;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh::env::Env;

use crate::capture::CaptureMode;

/// Where workload certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// Istio's `IstioCertificateService` at this URL (`CA_ADDRESS`); for `https://`, verified
    /// against the root in `root` (`CA_ROOT_CA`, default Istio's
    /// `/var/run/secrets/istio/root-cert.pem`).
    Remote {
        address: String,
        root: Option<PathBuf>,
        /// Name to verify instead of the address's host (`ALT_CA_HOSTNAME`).
        server_name: Option<String>,
    },
    /// A CA key and root on local disk (`LOCAL_CA_DIR`): the lab before the controller, tests.
    LocalDir(PathBuf),
}

/// Where workloads, services and policies come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// Delta ADS at this URL (`XDS_ADDRESS`); for `https://`, verified against the root in
    /// `root` (`XDS_ROOT_CA`, default as for the CA).
    Xds {
        address: String,
        root: Option<PathBuf>,
        /// Name to verify instead of the address's host (`ALT_XDS_HOSTNAME`).
        server_name: Option<String>,
    },
    /// Istio ztunnel's local YAML file (`LOCAL_XDS_PATH`), watched.
    LocalFile(PathBuf),
}

/// Shared: one ztunnel for the node's pods. Dedicated: ztunnel serves the one workload whose
/// network namespace it runs in (VMs, bare metal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyMode {
    Shared,
    Dedicated {
        namespace: String,
        name: String,
        service_account: String,
    },
}

/// Worker threads unless `ZTUNNEL_WORKER_THREADS` says otherwise. One, not Istio's two: a
/// tunnel's bytes pass two tasks (its relay and its HBONE connection's driver), and with two
/// workers tokio hands the second runnable task to the idle worker, so the bytes one task has
/// just touched cross to another core with a futex wake-up each time (4-5 times the context
/// switches per GB, and up to a fifth more CPU per GB with 4 streams, on the 2-core benchmark
/// machine). One worker keeps a tunnel on one core wherever the scheduler puts the thread; a
/// node whose ztunnel must carry more than a core's worth of tunnels raises it.
pub const DEFAULT_WORKER_THREADS: usize = 1;

/// Bounds on the work a peer can make ztunnel do before it has proven anything (see
/// [`mesh::limits`]). Past a bound the new connection or query alone is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettings {
    /// HBONE connections still in their TLS/HTTP/2 handshakes, per source address
    /// (`AMESH_HBONE_PENDING_PER_SOURCE`, default 64) ...
    pub hbone_pending_per_source: usize,
    /// ... and on the whole node (`AMESH_HBONE_PENDING_TOTAL`, default 1024).
    pub hbone_pending_total: usize,
    /// Open plaintext (15006) connections per client address (`AMESH_PLAINTEXT_PER_SOURCE`,
    /// default 1024): a client outside the mesh has no identity to be held to account by.
    pub plaintext_per_source: usize,
    /// Open DNS-over-TCP connections per pod (`AMESH_DNS_TCP_PER_POD`, default 64).
    pub dns_tcp_per_pod: usize,
    /// DNS queries forwarded upstream and not yet answered, per pod
    /// (`AMESH_DNS_FORWARDS_PER_POD`, default 128) ...
    pub dns_forwards_per_pod: usize,
    /// ... and on the whole node (`AMESH_DNS_FORWARDS_TOTAL`, default 1024).
    pub dns_forwards_total: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            hbone_pending_per_source: 64,
            hbone_pending_total: 1024,
            plaintext_per_source: 1024,
            dns_tcp_per_pod: 64,
            dns_forwards_per_pod: 128,
            dns_forwards_total: 1024,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub config_source: ConfigSource,
    pub ca: CaSource,
    pub trust_domain: String,
    pub cluster_id: String,
    pub node_name: String,
    /// ztunnel's own pod, as the DaemonSet's downward API gives it (`POD_NAME`,
    /// `POD_NAMESPACE`): it names this ztunnel in its xDS node id. Unset (outside a cluster),
    /// `ztunnel-<node>` in `istio-system`.
    pub pod_name: String,
    pub pod_namespace: String,
    pub packet_mark: u32,
    pub capture: CaptureMode,
    pub proxy_mode: ProxyMode,
    /// Inbound connections reach the app from the client's own address (`ENABLE_ORIG_SRC`, as
    /// Istio's ztunnel). That needs the in-pod policy route ztunnel installs with its capture,
    /// so it defaults to on in shared mode and off in dedicated mode, where the operator owns
    /// the rules: without that route the app's replies to a spoofed source leave the host.
    pub original_source: bool,
    /// Unix socket the CNI plugin talks to.
    pub cni_socket: PathBuf,
    /// istio-cni's ZDS socket (`INPOD_UDS`, as Istio's ztunnel). When set, pods come from
    /// istio-cni over ZDS instead of from amesh-cni (see [`crate::zds`]).
    pub inpod_uds: Option<PathBuf>,
    /// How long a pod ADD waits for the pod to appear in the configuration
    /// (`AMESH_POD_CONFIG_WAIT_SECONDS`).
    pub pod_config_wait: Duration,
    /// Persisted set of captured pods.
    pub state_file: PathBuf,
    /// Where eBPF capture pins the pods' sk_lookup links, on bpffs (`AMESH_BPF_PIN_DIR`,
    /// default `/sys/fs/bpf/amesh/<NODE_NAME>`): they outlive a restart there, so capture fails
    /// closed while no ztunnel runs.
    pub bpf_pin_dir: PathBuf,
    /// eBPF capture's in-pod hops through SOCKMAP (`AMESH_SOCKMAP=on|off`, default off) and
    /// the cgroup v2 directory its `sock_ops` program is attached to (`AMESH_CGROUP_PATH`,
    /// default: the cgroup2 mount).
    pub hops: crate::capture::sockmap::HopsConfig,
    pub admin_addr: SocketAddr,
    pub stats_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    pub cert_ttl: Duration,
    pub drain_deadline: Duration,
    /// Bearer token for the CA and xDS (a ServiceAccount token, or the lab's bootstrap token).
    pub token: Option<String>,
    /// Where `token` was read from (`AMESH_TOKEN_FILE`): re-read for every xDS connect and
    /// every minute for the CA, since the kubelet rotates projected tokens in place.
    pub token_file: Option<PathBuf>,
    /// JSON access logs instead of text.
    pub json_logs: bool,
    /// Threads of the runtime that carries traffic (`ZTUNNEL_WORKER_THREADS`, as Istio's
    /// ztunnel; default [`DEFAULT_WORKER_THREADS`], 1).
    pub worker_threads: usize,
    pub limits: LimitSettings,
    /// The resolver configuration whose nameservers get the DNS queries ztunnel does not
    /// answer itself (`AMESH_RESOLV_CONF`, default `/etc/resolv.conf`).
    pub resolv_conf: PathBuf,
    /// The cluster's DNS domain (`CLUSTER_DOMAIN`, as Istio's ztunnel; `cluster.local`).
    pub cluster_domain: String,
    /// Whether pods' DNS is captured and answered by ztunnel's DNS proxy
    /// (`ISTIO_META_DNS_CAPTURE`, Istio's proxy metadata name; on by default).
    pub dns_capture: bool,
}

/// Why the configuration could not be read; names the variable.
pub use mesh::env::EnvError as ConfigError;

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_map(&mesh::env::from_process())
    }

    pub fn from_map(env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let env = Env::new(env);
        let get = |k: &str| env.get(k);
        let invalid = Env::invalid;
        // Istio's ztunnel: inside a cluster the control plane defaults to istiod's address,
        // and an address without a scheme means TLS.
        let in_cluster = get("KUBERNETES_SERVICE_HOST").is_some();
        let control_plane = |var: &str| {
            get(var)
                .or_else(|| in_cluster.then(|| ISTIOD_ADDRESS.to_string()))
                .map(|a| with_scheme(&a))
        };
        // A local file and a control plane are two sources of the same thing: both set
        // explicitly is a mistake to report, not a choice to make silently (the defaults above
        // fill the address only when it is unset, so they never conflict).
        for (a, b) in [
            ("LOCAL_XDS_PATH", "XDS_ADDRESS"),
            ("LOCAL_CA_DIR", "CA_ADDRESS"),
        ] {
            if get(a).is_some() && get(b).is_some() {
                return Err(ConfigError::Conflict { a, b });
            }
        }
        let config_source = match (control_plane("XDS_ADDRESS"), get("LOCAL_XDS_PATH")) {
            (_, Some(path)) => ConfigSource::LocalFile(path.into()),
            (Some(address), None) => ConfigSource::Xds {
                root: root_for(&address, get("XDS_ROOT_CA")),
                server_name: get("ALT_XDS_HOSTNAME"),
                address,
            },
            (None, None) => {
                return Err(ConfigError::Missing {
                    var: "XDS_ADDRESS",
                    hint: " (or LOCAL_XDS_PATH for a local config file)",
                })
            }
        };
        let ca = match (control_plane("CA_ADDRESS"), get("LOCAL_CA_DIR")) {
            (_, Some(dir)) => CaSource::LocalDir(dir.into()),
            (Some(address), None) => CaSource::Remote {
                root: root_for(&address, get("CA_ROOT_CA")),
                server_name: get("ALT_CA_HOSTNAME"),
                address,
            },
            (None, None) => {
                return Err(ConfigError::Missing {
                    var: "CA_ADDRESS",
                    hint: " (or LOCAL_CA_DIR for a CA on local disk)",
                })
            }
        };
        let packet_mark = env.u32("PACKET_MARK", crate::sockets::DEFAULT_MARK)?;
        let capture =
            CaptureMode::parse(&get("CAPTURE_MODE").unwrap_or_default()).map_err(|why| {
                invalid(
                    "CAPTURE_MODE",
                    &get("CAPTURE_MODE").unwrap_or_default(),
                    &why,
                )
            })?;
        let proxy_mode = match get("PROXY_MODE").as_deref() {
            None | Some("shared") => ProxyMode::Shared,
            Some("dedicated") => {
                let info = get("PROXY_WORKLOAD_INFO").ok_or(ConfigError::Missing {
                    var: "PROXY_WORKLOAD_INFO",
                    hint: " with PROXY_MODE=dedicated, as <namespace>/<name>/<service account>",
                })?;
                let parts: Vec<&str> = info.split('/').collect();
                match parts[..] {
                    [ns, name, sa] if !ns.is_empty() && !name.is_empty() && !sa.is_empty() => {
                        ProxyMode::Dedicated {
                            namespace: ns.into(),
                            name: name.into(),
                            service_account: sa.into(),
                        }
                    }
                    _ => {
                        return Err(invalid(
                            "PROXY_WORKLOAD_INFO",
                            &info,
                            &"expected <namespace>/<name>/<service account>",
                        ))
                    }
                }
            }
            Some(other) => {
                return Err(invalid(
                    "PROXY_MODE",
                    other,
                    &"expected shared or dedicated",
                ))
            }
        };
        let original_source = env
            .bool("ENABLE_ORIG_SRC")?
            .unwrap_or(proxy_mode == ProxyMode::Shared);
        let secs = |var: &'static str, default: u64| env.secs(var, default);
        let worker_threads = match get("ZTUNNEL_WORKER_THREADS") {
            None => DEFAULT_WORKER_THREADS,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1024).contains(n))
                .ok_or_else(|| invalid("ZTUNNEL_WORKER_THREADS", &v, &"expected 1 to 1024"))?,
        };
        let count = |var: &'static str, default: usize| env.count(var, default);
        let defaults = LimitSettings::default();
        let limits = LimitSettings {
            hbone_pending_per_source: count(
                "AMESH_HBONE_PENDING_PER_SOURCE",
                defaults.hbone_pending_per_source,
            )?,
            hbone_pending_total: count("AMESH_HBONE_PENDING_TOTAL", defaults.hbone_pending_total)?,
            plaintext_per_source: count(
                "AMESH_PLAINTEXT_PER_SOURCE",
                defaults.plaintext_per_source,
            )?,
            dns_tcp_per_pod: count("AMESH_DNS_TCP_PER_POD", defaults.dns_tcp_per_pod)?,
            dns_forwards_per_pod: count(
                "AMESH_DNS_FORWARDS_PER_POD",
                defaults.dns_forwards_per_pod,
            )?,
            dns_forwards_total: count("AMESH_DNS_FORWARDS_TOTAL", defaults.dns_forwards_total)?,
        };
        // The token: a file named here, else a literal, else where Istio's ztunnel finds its
        // projected ServiceAccount token.
        let token_file = match (get("AMESH_TOKEN_FILE"), get("AMESH_TOKEN")) {
            (Some(path), _) => Some(PathBuf::from(path)),
            (None, Some(_)) => None,
            (None, None) => Some(PathBuf::from(ISTIO_TOKEN_PATH)).filter(|p| p.is_file()),
        };
        let node_name = get("NODE_NAME").unwrap_or_default();
        if node_name.is_empty() && proxy_mode == ProxyMode::Shared {
            return Err(ConfigError::Missing {
                var: "NODE_NAME",
                hint: " (the Kubernetes node this ztunnel serves)",
            });
        }
        let bpf_pin_dir = get("AMESH_BPF_PIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let node = if node_name.is_empty() {
                    "ztunnel"
                } else {
                    &node_name
                };
                Path::new(crate::capture::links::BPFFS)
                    .join("amesh")
                    .join(node)
            });
        let sockmap = get("AMESH_SOCKMAP").unwrap_or_default();
        let hops = crate::capture::sockmap::HopsConfig {
            setting: crate::capture::sockmap::HopsSetting::parse(&sockmap)
                .map_err(|why| invalid("AMESH_SOCKMAP", &sockmap, &why))?,
            cgroup: get("AMESH_CGROUP_PATH").map(PathBuf::from),
        };
        Ok(Config {
            config_source,
            ca,
            trust_domain: get("TRUST_DOMAIN").unwrap_or_else(|| "cluster.local".into()),
            cluster_id: get("CLUSTER_ID").unwrap_or_else(|| "Kubernetes".into()),
            pod_name: get("POD_NAME").unwrap_or_else(|| format!("ztunnel-{node_name}")),
            pod_namespace: get("POD_NAMESPACE").unwrap_or_else(|| "istio-system".into()),
            node_name,
            packet_mark,
            capture,
            proxy_mode,
            original_source,
            cni_socket: get("AMESH_CNI_SOCKET")
                .unwrap_or_else(|| crate::cni::DEFAULT_SOCKET.into())
                .into(),
            inpod_uds: get("INPOD_UDS").map(PathBuf::from),
            pod_config_wait: secs(
                "AMESH_POD_CONFIG_WAIT_SECONDS",
                crate::pods::CONFIG_WAIT.as_secs(),
            )?,
            state_file: get("AMESH_STATE_FILE")
                .unwrap_or_else(|| "/var/run/ztunnel/pods.json".into())
                .into(),
            bpf_pin_dir,
            hops,
            admin_addr: env.addr("ADMIN_ADDR", "127.0.0.1:15000")?,
            stats_addr: env.addr("STATS_ADDR", "0.0.0.0:15020")?,
            readiness_addr: env.addr("READINESS_ADDR", "0.0.0.0:15021")?,
            worker_threads,
            cert_ttl: match (env.go_duration("SECRET_TTL")?, get("CERT_TTL_SECONDS")) {
                (Some(ttl), None) => ttl,
                (None, _) => secs("CERT_TTL_SECONDS", 24 * 3600)?,
                (Some(_), Some(_)) => {
                    return Err(ConfigError::Conflict {
                        a: "SECRET_TTL",
                        b: "CERT_TTL_SECONDS",
                    })
                }
            },
            drain_deadline: secs("DRAIN_DEADLINE_SECONDS", 5)?,
            token: match &token_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| invalid("AMESH_TOKEN_FILE", &path.display().to_string(), &e))?
                        .trim()
                        .to_string(),
                ),
                None => get("AMESH_TOKEN"),
            },
            token_file,
            json_logs: get("LOG_FORMAT").as_deref() == Some("json"),
            limits,
            resolv_conf: get("AMESH_RESOLV_CONF")
                .unwrap_or_else(|| "/etc/resolv.conf".into())
                .into(),
            dns_capture: env.bool("ISTIO_META_DNS_CAPTURE")?.unwrap_or(true),
            cluster_domain: get("CLUSTER_DOMAIN")
                .map(|d| d.trim_matches('.').to_ascii_lowercase())
                .unwrap_or_else(|| "cluster.local".into()),
        })
    }
}

impl Config {
    /// The xDS node id Istio's ztunnel sends:
    /// `ztunnel~<ip>~<pod name>.<pod namespace>~<pod namespace>.svc.cluster.local`.
    pub fn xds_node_id(&self, ip: std::net::IpAddr) -> String {
        mesh::xds::ztunnel_node_id(ip, &self.pod_name, &self.pod_namespace)
    }
}

/// The root file to verify a TLS control plane with: the configured one, else Istio's mounted
/// default; none for a plaintext address.
fn root_for(address: &str, configured: Option<String>) -> Option<PathBuf> {
    mesh::control::is_tls(address).then(|| {
        configured
            .unwrap_or_else(|| mesh::control::DEFAULT_ROOT_CA_PATH.into())
            .into()
    })
}

/// Istio's default control plane address inside a cluster.
pub const ISTIOD_ADDRESS: &str = "https://istiod.istio-system.svc:15012";
/// Where Istio's ztunnel reads its projected ServiceAccount token.
pub const ISTIO_TOKEN_PATH: &str = "/var/run/secrets/tokens/istio-token";

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn istio_drop_in_settings() {
        // Scheme-less addresses are TLS, as Istio's ztunnel reads them.
        let c = Config::from_map(&env(&[
            ("XDS_ADDRESS", "istiod.istio-system.svc:15012"),
            ("CA_ADDRESS", "istiod.istio-system.svc:15012"),
            ("NODE_NAME", "node1"),
            ("SECRET_TTL", "12h30m"),
        ]))
        .unwrap();
        assert!(matches!(&c.config_source, ConfigSource::Xds { address, .. }
            if address == "https://istiod.istio-system.svc:15012"));
        assert!(matches!(&c.ca, CaSource::Remote { address, .. }
            if address == "https://istiod.istio-system.svc:15012"));
        assert_eq!(c.cert_ttl, Duration::from_secs(12 * 3600 + 30 * 60));
        // In a cluster, the addresses default to istiod's.
        let c = Config::from_map(&env(&[
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("NODE_NAME", "node1"),
        ]))
        .unwrap();
        assert!(
            matches!(&c.config_source, ConfigSource::Xds { address, .. } if address == ISTIOD_ADDRESS)
        );
        // Outside one, nothing is guessed.
        assert!(matches!(
            Config::from_map(&env(&[("NODE_NAME", "node1")])),
            Err(ConfigError::Missing {
                var: "XDS_ADDRESS",
                ..
            })
        ));
        let e = Config::from_map(&env(&[
            ("XDS_ADDRESS", "x:1"),
            ("CA_ADDRESS", "x:1"),
            ("NODE_NAME", "n"),
            ("SECRET_TTL", "1d"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("SECRET_TTL=\"1d\""), "{e}");
        assert!(matches!(
            Config::from_map(&env(&[
                ("XDS_ADDRESS", "x:1"),
                ("CA_ADDRESS", "x:1"),
                ("NODE_NAME", "n"),
                ("SECRET_TTL", "1h"),
                ("CERT_TTL_SECONDS", "3600"),
            ])),
            Err(ConfigError::Conflict { .. })
        ));
    }

    #[test]
    fn istio_names_and_defaults() {
        let c = Config::from_map(&env(&[
            ("XDS_ADDRESS", "http://10.0.0.1:15010"),
            ("CA_ADDRESS", "http://10.0.0.1:15010"),
            ("NODE_NAME", "node1"),
            ("PACKET_MARK", "0x539"),
        ]))
        .unwrap();
        assert_eq!(c.packet_mark, 1337);
        assert_eq!(c.trust_domain, "cluster.local");
        assert_eq!(c.proxy_mode, ProxyMode::Shared);
        assert_eq!(c.admin_addr.port(), 15000);
        assert!(c.original_source);
    }

    #[test]
    fn tls_control_plane_roots() {
        let c = Config::from_map(&env(&[
            ("XDS_ADDRESS", "https://istiod.istio-system.svc:15012"),
            ("CA_ADDRESS", "https://istiod.istio-system.svc:15012"),
            ("CA_ROOT_CA", "/etc/ca/root.pem"),
            ("NODE_NAME", "node1"),
        ]))
        .unwrap();
        assert_eq!(
            c.config_source,
            ConfigSource::Xds {
                address: "https://istiod.istio-system.svc:15012".into(),
                root: Some(mesh::control::DEFAULT_ROOT_CA_PATH.into()),
                server_name: None,
            }
        );
        assert!(
            matches!(c.ca, CaSource::Remote { root: Some(ref r), .. } if r == std::path::Path::new("/etc/ca/root.pem"))
        );
        let plain = Config::from_map(&env(&[
            ("XDS_ADDRESS", "http://10.0.0.1:15010"),
            ("CA_ADDRESS", "http://10.0.0.1:15010"),
            ("XDS_ROOT_CA", "/unused.pem"),
            ("NODE_NAME", "node1"),
        ]))
        .unwrap();
        assert!(matches!(
            plain.config_source,
            ConfigSource::Xds { root: None, .. }
        ));
    }

    #[test]
    fn dedicated_mode_does_not_spoof_by_default() {
        let base = [
            ("LOCAL_XDS_PATH", "/x.yaml"),
            ("LOCAL_CA_DIR", "/ca"),
            ("PROXY_MODE", "dedicated"),
            ("PROXY_WORKLOAD_INFO", "ns/vm-1/sa"),
        ];
        let c = Config::from_map(&env(&base)).unwrap();
        assert_eq!(
            c.proxy_mode,
            ProxyMode::Dedicated {
                namespace: "ns".into(),
                name: "vm-1".into(),
                service_account: "sa".into(),
            }
        );
        assert!(!c.original_source);
        let mut with = base.to_vec();
        with.push(("ENABLE_ORIG_SRC", "true"));
        assert!(Config::from_map(&env(&with)).unwrap().original_source);
        with.pop();
        with.push(("ENABLE_ORIG_SRC", "yes"));
        let e = Config::from_map(&env(&with)).unwrap_err();
        assert!(e.to_string().contains("ENABLE_ORIG_SRC"), "{e}");
    }

    #[test]
    fn errors_name_the_variable() {
        let e = Config::from_map(&env(&[("CA_ADDRESS", "x"), ("NODE_NAME", "n")])).unwrap_err();
        assert!(e.to_string().contains("XDS_ADDRESS"), "{e}");
        let e = Config::from_map(&env(&[
            ("LOCAL_XDS_PATH", "/x.yaml"),
            ("LOCAL_CA_DIR", "/ca"),
            ("PROXY_MODE", "dedicated"),
            ("PROXY_WORKLOAD_INFO", "ns/name"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("PROXY_WORKLOAD_INFO"), "{e}");
        let e = Config::from_map(&env(&[
            ("LOCAL_XDS_PATH", "/x.yaml"),
            ("LOCAL_CA_DIR", "/ca"),
            ("NODE_NAME", "n"),
            ("PACKET_MARK", "lots"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("PACKET_MARK=\"lots\""), "{e}");
    }

    #[test]
    fn the_node_id_names_the_pod_from_the_downward_api() {
        let base = [
            ("XDS_ADDRESS", "http://127.0.0.1:15010"),
            ("CA_ADDRESS", "http://127.0.0.1:15010"),
            ("NODE_NAME", "node1"),
        ];
        let ip: std::net::IpAddr = "10.0.0.7".parse().unwrap();
        let mut with = base.to_vec();
        with.push(("POD_NAME", "ztunnel-x7k2p"));
        with.push(("POD_NAMESPACE", "kube-system"));
        assert_eq!(
            Config::from_map(&env(&with)).unwrap().xds_node_id(ip),
            "ztunnel~10.0.0.7~ztunnel-x7k2p.kube-system~kube-system.svc.cluster.local"
        );
        // Unset (or blank), the previous names stand in.
        let mut blank = base.to_vec();
        blank.push(("POD_NAME", " "));
        for vars in [base.to_vec(), blank] {
            assert_eq!(
                Config::from_map(&env(&vars)).unwrap().xds_node_id(ip),
                "ztunnel~10.0.0.7~ztunnel-node1.istio-system~istio-system.svc.cluster.local"
            );
        }
    }

    #[test]
    fn a_local_source_and_a_control_plane_together_are_an_error() {
        let e = Config::from_map(&env(&[
            ("LOCAL_XDS_PATH", "/x.yaml"),
            ("XDS_ADDRESS", "http://127.0.0.1:15010"),
            ("LOCAL_CA_DIR", "/ca"),
            ("NODE_NAME", "n"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("LOCAL_XDS_PATH") && e.contains("XDS_ADDRESS"),
            "{e}"
        );
        let e = Config::from_map(&env(&[
            ("LOCAL_XDS_PATH", "/x.yaml"),
            ("LOCAL_CA_DIR", "/ca"),
            ("CA_ADDRESS", "http://127.0.0.1:15010"),
            ("NODE_NAME", "n"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("LOCAL_CA_DIR") && e.contains("CA_ADDRESS"),
            "{e}"
        );
        // In a cluster the addresses default to istiod's; a local file alone is no conflict.
        let c = Config::from_map(&env(&[
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("LOCAL_XDS_PATH", "/x.yaml"),
            ("LOCAL_CA_DIR", "/ca"),
            ("NODE_NAME", "n"),
        ]))
        .unwrap();
        assert_eq!(c.config_source, ConfigSource::LocalFile("/x.yaml".into()));
        assert_eq!(c.ca, CaSource::LocalDir("/ca".into()));
        // A control plane for one and a local source for the other is fine.
        let c = Config::from_map(&env(&[
            ("LOCAL_XDS_PATH", "/x.yaml"),
            ("CA_ADDRESS", "http://127.0.0.1:15010"),
            ("NODE_NAME", "n"),
        ]))
        .unwrap();
        assert!(matches!(c.ca, CaSource::Remote { .. }));
    }

    #[test]
    fn worker_threads_default_to_one_and_reject_zero() {
        let base = [
            ("XDS_ADDRESS", "http://127.0.0.1:15010"),
            ("CA_ADDRESS", "http://127.0.0.1:15010"),
            ("NODE_NAME", "n1"),
        ];
        let c = Config::from_map(&env(&base)).unwrap();
        assert_eq!(c.worker_threads, 1);
        let mut four = base.to_vec();
        four.push(("ZTUNNEL_WORKER_THREADS", "4"));
        assert_eq!(Config::from_map(&env(&four)).unwrap().worker_threads, 4);
        let mut zero = base.to_vec();
        zero.push(("ZTUNNEL_WORKER_THREADS", "0"));
        let e = Config::from_map(&env(&zero)).unwrap_err().to_string();
        assert!(e.contains("ZTUNNEL_WORKER_THREADS=\"0\""), "{e}");
    }
}

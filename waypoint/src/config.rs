//! The waypoint's settings, from environment variables with Istio's names where Istio has one
//! (read through a map, so tests pass their own).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use mesh::Identity;

/// Where routes, policies and addresses come from.
#[derive(Debug, Clone)]
pub enum ControlPlane {
    /// Delta ADS at `XDS_ADDRESS`.
    Xds {
        address: String,
        root: Option<PathBuf>,
    },
    /// Files: Istio's local file (`LOCAL_XDS_PATH`) and the L7 file (`AMESH_L7_PATH`).
    Files { l4: PathBuf, l7: Option<PathBuf> },
}

/// Who signs the waypoint's certificate.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// A CA on disk (`LOCAL_CA_DIR`): the lab's file mode and tests.
    LocalDir(PathBuf),
    /// `IstioCertificateService` at `CA_ADDRESS`.
    Remote {
        address: String,
        root: Option<PathBuf>,
    },
}

/// Everything the waypoint needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The waypoint's own workload identity.
    pub identity: Identity,
    pub pod_name: String,
    pub namespace: String,
    /// `GATEWAY_NAME`: the Gateway this waypoint implements (in `namespace`).
    pub gateway: String,
    pub instance_ip: IpAddr,
    pub node_name: String,
    pub cluster_id: String,
    pub cluster_domain: String,
    pub control: ControlPlane,
    pub ca: CaSource,
    /// Bearer token for the controller (`AMESH_TOKEN`, or re-read from `AMESH_TOKEN_FILE`).
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub hbone_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub stats_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    pub worker_threads: usize,
    pub drain_deadline: Duration,
    pub cert_ttl: Duration,
}

/// A setting is missing or malformed; names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

fn err(var: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        problem: problem.into(),
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_map(&std::env::vars().collect())
    }

    pub fn from_map(env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let required = |k: &'static str| {
            get(k)
                .map(str::to_string)
                .ok_or_else(|| err(k, "required (set by the waypoint's Deployment)"))
        };
        let namespace = required("POD_NAMESPACE")?;
        let pod_name = required("POD_NAME")?;
        let gateway = required("GATEWAY_NAME")?;
        let service_account = get("SERVICE_ACCOUNT").unwrap_or(&gateway).to_string();
        let trust_domain = get("TRUST_DOMAIN").unwrap_or("cluster.local").to_string();
        let identity = Identity::new(&trust_domain, &namespace, &service_account)
            .map_err(|e| err("SERVICE_ACCOUNT", e.to_string()))?;
        let instance_ip = match get("INSTANCE_IP") {
            Some(v) => v
                .parse()
                .map_err(|_| err("INSTANCE_IP", format!("{v:?} is not an IP address")))?,
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let control =
            match (get("XDS_ADDRESS"), get("LOCAL_XDS_PATH")) {
                (Some(_), Some(_)) => {
                    return Err(err(
                        "XDS_ADDRESS",
                        "both XDS_ADDRESS and LOCAL_XDS_PATH are set; choose one",
                    ))
                }
                (Some(address), None) => ControlPlane::Xds {
                    address: with_scheme(address),
                    root: get("XDS_ROOT_CA").map(PathBuf::from),
                },
                (None, Some(path)) => ControlPlane::Files {
                    l4: path.into(),
                    l7: get("AMESH_L7_PATH").map(PathBuf::from),
                },
                (None, None) => return Err(err(
                    "XDS_ADDRESS",
                    "no control plane: set XDS_ADDRESS (the controller) or LOCAL_XDS_PATH (files)",
                )),
            };
        let ca = match (get("LOCAL_CA_DIR"), get("CA_ADDRESS")) {
            (Some(dir), _) => CaSource::LocalDir(dir.into()),
            (None, Some(address)) => CaSource::Remote {
                address: with_scheme(address),
                root: get("CA_ROOT_CA").map(PathBuf::from),
            },
            (None, None) => match &control {
                ControlPlane::Xds { address, root } => CaSource::Remote {
                    address: address.clone(),
                    root: root.clone(),
                },
                ControlPlane::Files { .. } => {
                    return Err(err(
                        "CA_ADDRESS",
                        "no certificate source: set CA_ADDRESS or LOCAL_CA_DIR",
                    ))
                }
            },
        };
        let addr = |k: &'static str, default: &str| -> Result<SocketAddr, ConfigError> {
            get(k)
                .unwrap_or(default)
                .parse()
                .map_err(|_| err(k, "not an ip:port"))
        };
        let worker_threads = match get("WAYPOINT_WORKER_THREADS") {
            Some(v) => v
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| err("WAYPOINT_WORKER_THREADS", "a positive number"))?,
            None => 2,
        };
        let secs = |k: &'static str, default: u64| -> Result<Duration, ConfigError> {
            match get(k) {
                Some(v) => v
                    .parse()
                    .map(Duration::from_secs)
                    .map_err(|_| err(k, "a number of seconds")),
                None => Ok(Duration::from_secs(default)),
            }
        };
        Ok(Config {
            identity,
            pod_name,
            namespace,
            gateway,
            instance_ip,
            node_name: get("NODE_NAME").unwrap_or_default().to_string(),
            cluster_id: get("CLUSTER_ID").unwrap_or("Kubernetes").to_string(),
            cluster_domain: get("CLUSTER_DOMAIN").unwrap_or("cluster.local").to_string(),
            control,
            ca,
            token: get("AMESH_TOKEN").map(str::to_string),
            token_file: get("AMESH_TOKEN_FILE").map(PathBuf::from),
            hbone_addr: addr("AMESH_HBONE_ADDR", "0.0.0.0:15008")?,
            admin_addr: addr("AMESH_ADMIN_ADDR", "127.0.0.1:15000")?,
            stats_addr: addr("AMESH_STATS_ADDR", "0.0.0.0:15020")?,
            readiness_addr: addr("AMESH_READINESS_ADDR", "0.0.0.0:15021")?,
            worker_threads,
            drain_deadline: secs("TERMINATION_DRAIN_DURATION_SECONDS", 5)?,
            cert_ttl: secs("CERT_TTL_SECONDS", 24 * 3600)?,
        })
    }

    /// The hostname of this waypoint's Service, as bindings name it.
    pub fn service_hostname(&self) -> String {
        format!(
            "{}.{}.svc.{}",
            self.gateway, self.namespace, self.cluster_domain
        )
    }
}

/// An address without a scheme is TLS, as Istio's chart values are written.
fn with_scheme(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("https://{address}")
    }
}

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
    fn controller_mode_defaults() {
        let c = Config::from_map(&env(&[
            ("POD_NAMESPACE", "bookinfo"),
            ("POD_NAME", "waypoint-0"),
            ("GATEWAY_NAME", "waypoint"),
            ("XDS_ADDRESS", "10.0.0.1:15012"),
        ]))
        .unwrap();
        assert_eq!(
            c.identity.to_string(),
            "spiffe://cluster.local/ns/bookinfo/sa/waypoint"
        );
        assert!(
            matches!(c.control, ControlPlane::Xds { ref address, .. } if address == "https://10.0.0.1:15012")
        );
        assert!(
            matches!(c.ca, CaSource::Remote { ref address, .. } if address == "https://10.0.0.1:15012")
        );
        assert_eq!(c.service_hostname(), "waypoint.bookinfo.svc.cluster.local");
        assert_eq!(c.hbone_addr.port(), 15008);
    }

    #[test]
    fn errors_name_the_variable() {
        let e = Config::from_map(&env(&[("POD_NAME", "w")])).unwrap_err();
        assert_eq!(e.var, "POD_NAMESPACE");
        let e = Config::from_map(&env(&[
            ("POD_NAMESPACE", "a"),
            ("POD_NAME", "w"),
            ("GATEWAY_NAME", "w"),
        ]))
        .unwrap_err();
        assert_eq!(e.var, "XDS_ADDRESS");
        let e = Config::from_map(&env(&[
            ("POD_NAMESPACE", "a"),
            ("POD_NAME", "w"),
            ("GATEWAY_NAME", "w"),
            ("LOCAL_XDS_PATH", "/x"),
            ("INSTANCE_IP", "nope"),
        ]))
        .unwrap_err();
        assert_eq!(e.var, "INSTANCE_IP");
    }
}

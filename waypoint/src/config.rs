//! The waypoint's settings, from environment variables with Istio's names where Istio has one
//! (read through a map, so tests pass their own).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use mesh::control::with_scheme;
use mesh::env::{Env, EnvMap};
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
    /// `AMESH_WAYPOINT_LB`: `ROUND_ROBIN` (default) or `LEAST_REQUEST`, for every service
    /// until DestinationRules choose per service.
    pub balancer: crate::balance::Balancer,
    /// `AMESH_ACCESS_LOG`: `on` (default) or `off`, like Istio's mesh-wide access log switch;
    /// off saves formatting and writing a line per request.
    pub access_log: bool,
}

/// A setting is missing or malformed; the error names the variable (`mesh::env`'s).
pub use mesh::env::EnvError as ConfigError;

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_map(&mesh::env::from_process())
    }

    pub fn from_map(map: &EnvMap) -> Result<Self, ConfigError> {
        let env = Env::new(map);
        let required = |var: &'static str| {
            env.get(var).ok_or(ConfigError::Missing {
                var,
                hint: " (set by the waypoint's Deployment)",
            })
        };
        let namespace = required("POD_NAMESPACE")?;
        let pod_name = required("POD_NAME")?;
        let gateway = required("GATEWAY_NAME")?;
        let service_account = env
            .get("SERVICE_ACCOUNT")
            .unwrap_or_else(|| gateway.clone());
        let trust_domain = env
            .get("TRUST_DOMAIN")
            .unwrap_or_else(|| "cluster.local".into());
        let identity = Identity::new(&trust_domain, &namespace, &service_account)
            .map_err(|e| Env::invalid("SERVICE_ACCOUNT", &service_account, &e))?;
        let instance_ip = match env.get("INSTANCE_IP") {
            Some(v) => v
                .parse()
                .map_err(|_| Env::invalid("INSTANCE_IP", &v, &"not an IP address"))?,
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let control = match (env.get("XDS_ADDRESS"), env.get("LOCAL_XDS_PATH")) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Conflict {
                    a: "XDS_ADDRESS",
                    b: "LOCAL_XDS_PATH",
                })
            }
            (Some(address), None) => ControlPlane::Xds {
                address: with_scheme(&address),
                root: env.get("XDS_ROOT_CA").map(PathBuf::from),
            },
            (None, Some(path)) => ControlPlane::Files {
                l4: path.into(),
                l7: env.get("AMESH_L7_PATH").map(PathBuf::from),
            },
            (None, None) => {
                return Err(ConfigError::Missing {
                    var: "XDS_ADDRESS",
                    hint: " (the controller), or LOCAL_XDS_PATH (files)",
                })
            }
        };
        let ca = match (env.get("LOCAL_CA_DIR"), env.get("CA_ADDRESS")) {
            (Some(dir), _) => CaSource::LocalDir(dir.into()),
            (None, Some(address)) => CaSource::Remote {
                address: with_scheme(&address),
                root: env.get("CA_ROOT_CA").map(PathBuf::from),
            },
            (None, None) => match &control {
                ControlPlane::Xds { address, root } => CaSource::Remote {
                    address: address.clone(),
                    root: root.clone(),
                },
                ControlPlane::Files { .. } => {
                    return Err(ConfigError::Missing {
                        var: "CA_ADDRESS",
                        hint: " (or LOCAL_CA_DIR) with LOCAL_XDS_PATH",
                    })
                }
            },
        };
        let worker_threads = env.count("WAYPOINT_WORKER_THREADS", 2)?;
        if worker_threads == 0 {
            return Err(Env::invalid(
                "WAYPOINT_WORKER_THREADS",
                "0",
                &"at least one worker",
            ));
        }
        let balancer = match env.get("AMESH_WAYPOINT_LB").as_deref() {
            None => crate::balance::Balancer::RoundRobin,
            Some(v) if v.eq_ignore_ascii_case("ROUND_ROBIN") => {
                crate::balance::Balancer::RoundRobin
            }
            Some(v) if v.eq_ignore_ascii_case("LEAST_REQUEST") => {
                crate::balance::Balancer::LeastRequest
            }
            Some(v) => {
                return Err(Env::invalid(
                    "AMESH_WAYPOINT_LB",
                    v,
                    &"ROUND_ROBIN or LEAST_REQUEST",
                ))
            }
        };
        let access_log = match env.get("AMESH_ACCESS_LOG").as_deref() {
            None => true,
            Some(v) if v.eq_ignore_ascii_case("on") => true,
            Some(v) if v.eq_ignore_ascii_case("off") => false,
            Some(v) => return Err(Env::invalid("AMESH_ACCESS_LOG", v, &"on or off")),
        };
        Ok(Config {
            balancer,
            access_log,
            identity,
            pod_name,
            namespace,
            gateway,
            instance_ip,
            node_name: env.get("NODE_NAME").unwrap_or_default(),
            cluster_id: env.get("CLUSTER_ID").unwrap_or_else(|| "Kubernetes".into()),
            cluster_domain: env
                .get("CLUSTER_DOMAIN")
                .unwrap_or_else(|| "cluster.local".into()),
            control,
            ca,
            token: env.get("AMESH_TOKEN"),
            token_file: env.get("AMESH_TOKEN_FILE").map(PathBuf::from),
            hbone_addr: env.addr("AMESH_HBONE_ADDR", "0.0.0.0:15008")?,
            admin_addr: env.addr("AMESH_ADMIN_ADDR", "127.0.0.1:15000")?,
            stats_addr: env.addr("AMESH_STATS_ADDR", "0.0.0.0:15020")?,
            readiness_addr: env.addr("AMESH_READINESS_ADDR", "0.0.0.0:15021")?,
            worker_threads,
            drain_deadline: env.secs("TERMINATION_DRAIN_DURATION_SECONDS", 5)?,
            cert_ttl: env.secs("CERT_TTL_SECONDS", 24 * 3600)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn access_log_is_on_unless_switched_off() {
        let base = [
            ("POD_NAMESPACE", "bookinfo"),
            ("POD_NAME", "waypoint-0"),
            ("GATEWAY_NAME", "waypoint"),
            ("XDS_ADDRESS", "10.0.0.1:15012"),
        ];
        let with = |v: Option<&str>| {
            let mut pairs = base.to_vec();
            pairs.extend(v.map(|v| ("AMESH_ACCESS_LOG", v)));
            Config::from_map(&env(&pairs))
        };
        assert!(with(None).unwrap().access_log);
        assert!(with(Some("on")).unwrap().access_log);
        assert!(!with(Some("OFF")).unwrap().access_log);
        let e = with(Some("maybe")).unwrap_err().to_string();
        assert!(e.contains("AMESH_ACCESS_LOG"), "{e}");
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
        assert!(e.to_string().starts_with("POD_NAMESPACE"), "{e}");
        let e = Config::from_map(&env(&[
            ("POD_NAMESPACE", "a"),
            ("POD_NAME", "w"),
            ("GATEWAY_NAME", "w"),
        ]))
        .unwrap_err();
        assert!(e.to_string().starts_with("XDS_ADDRESS"), "{e}");
        let e = Config::from_map(&env(&[
            ("POD_NAMESPACE", "a"),
            ("POD_NAME", "w"),
            ("GATEWAY_NAME", "w"),
            ("LOCAL_XDS_PATH", "/x"),
            ("INSTANCE_IP", "nope"),
        ]))
        .unwrap_err();
        assert!(e.to_string().starts_with("INSTANCE_IP"), "{e}");
    }
}

//! Name lookups for the echo app's next hops, as a pod's libc resolver makes them: the
//! nameservers, search list and `ndots` of the pod's `resolv.conf`, A queries over UDP. The
//! lab enters a pod's network namespace without a mount namespace, so `/etc/resolv.conf` would
//! be the host's: the lab names the pod's own file (`--resolv-conf`), and the queries leave
//! from the pod, where the mesh captures them like any app's.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;

/// How long one nameserver gets to answer one query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// A lookup that found nothing.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot resolve {host}: no nameserver in {resolv_conf}")]
    NoNameserver { host: String, resolv_conf: String },
    #[error("cannot resolve {host}: no A record for any of {tried:?}")]
    NotFound { host: String, tried: Vec<String> },
    #[error("cannot resolve {host}: {detail}")]
    Failed { host: String, detail: String },
}

/// What a `resolv.conf` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolver {
    /// Where it was read from, for errors.
    pub source: String,
    pub nameservers: Vec<SocketAddr>,
    pub search: Vec<String>,
    pub ndots: usize,
}

impl Resolver {
    /// Reads `path`; a missing or unreadable file is a resolver without nameservers (IP
    /// literals still work).
    pub fn load(path: &Path) -> Resolver {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        Resolver::parse(&path.display().to_string(), &text)
    }

    /// Parses `nameserver`, `search` (or `domain`) and `options ndots:N`, as glibc does (later
    /// `search` lines replace earlier ones; ndots defaults to 1).
    pub fn parse(source: &str, text: &str) -> Resolver {
        let mut r = Resolver {
            source: source.to_string(),
            ndots: 1,
            ..Resolver::default()
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                        r.nameservers.push(SocketAddr::new(ip, 53));
                    }
                }
                Some("search") | Some("domain") => {
                    r.search = words.map(|w| w.trim_end_matches('.').to_string()).collect();
                }
                Some("options") => {
                    for o in words {
                        if let Some(n) = o.strip_prefix("ndots:").and_then(|n| n.parse().ok()) {
                            r.ndots = n;
                        }
                    }
                }
                _ => {}
            }
        }
        r
    }

    /// The names tried for `host`, in order: a name ending in a dot as it is; one with at
    /// least `ndots` dots as it is first, then with each search domain; any other with each
    /// search domain first, then as it is.
    pub fn candidates(&self, host: &str) -> Vec<String> {
        if let Some(absolute) = host.strip_suffix('.') {
            return vec![absolute.to_string()];
        }
        let searched = self.search.iter().map(|d| format!("{host}.{d}"));
        if host.matches('.').count() >= self.ndots {
            std::iter::once(host.to_string()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(host.to_string())).collect()
        }
    }

    /// The first IPv4 address of `host` (an IP literal is itself).
    pub async fn lookup(&self, host: &str) -> Result<IpAddr, ResolveError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(ip);
        }
        if self.nameservers.is_empty() {
            return Err(ResolveError::NoNameserver {
                host: host.to_string(),
                resolv_conf: self.source.clone(),
            });
        }
        let tried = self.candidates(host);
        let mut last_failure = None;
        for name in &tried {
            for ns in &self.nameservers {
                match query_a(*ns, name).await {
                    Ok(Some(ip)) => return Ok(ip),
                    // NXDOMAIN or no A record: the next candidate, as libc goes on.
                    Ok(None) => break,
                    Err(e) => last_failure = Some(format!("{ns}: {e}")),
                }
            }
        }
        Err(match last_failure {
            Some(detail) => ResolveError::Failed {
                host: host.to_string(),
                detail,
            },
            None => ResolveError::NotFound {
                host: host.to_string(),
                tried,
            },
        })
    }
}

/// One A query to one nameserver: an address, `None` when the name has none, or why the
/// nameserver gave no usable answer.
async fn query_a(ns: SocketAddr, name: &str) -> Result<Option<IpAddr>, String> {
    let fqdn = Name::from_ascii(format!("{name}.")).map_err(|e| format!("bad name: {e}"))?;
    // Any id will do for a socket of our own; varying it costs nothing.
    let id = (std::process::id() as u16) ^ (name.len() as u16).rotate_left(8);
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(fqdn, RecordType::A));
    let bytes = m.to_vec().map_err(|e| e.to_string())?;
    let bind: SocketAddr = if ns.is_ipv4() {
        "0.0.0.0:0".parse().expect("a socket address literal")
    } else {
        "[::]:0".parse().expect("a socket address literal")
    };
    let socket = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    socket.connect(ns).await.map_err(|e| e.to_string())?;
    socket.send(&bytes).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let reply = loop {
        let n = tokio::time::timeout(QUERY_TIMEOUT, socket.recv(&mut buf))
            .await
            .map_err(|_| format!("no answer within {QUERY_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        match Message::from_vec(&buf[..n]) {
            Ok(reply) if reply.metadata.id == id => break reply,
            // A stray datagram: keep waiting for ours.
            _ => continue,
        }
    };
    match reply.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        code => return Err(format!("answered {code}")),
    }
    Ok(reply.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        _ => None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "nameserver 10.99.0.1\nsearch bookinfo.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n";

    #[test]
    fn reads_a_pods_resolv_conf() {
        let r = Resolver::parse("pod", POD);
        assert_eq!(r.nameservers, ["10.99.0.1:53".parse().unwrap()]);
        assert_eq!(r.search.len(), 3);
        assert_eq!(r.ndots, 5);
        assert_eq!(Resolver::parse("x", "").ndots, 1);
    }

    #[test]
    fn search_list_order_follows_ndots() {
        let r = Resolver::parse("pod", POD);
        assert_eq!(
            r.candidates("details"),
            [
                "details.bookinfo.svc.cluster.local",
                "details.svc.cluster.local",
                "details.cluster.local",
                "details"
            ]
        );
        assert_eq!(r.candidates("a.b.c.d.e.f")[0], "a.b.c.d.e.f");
        assert_eq!(
            r.candidates("ratings.bookinfo.svc."),
            ["ratings.bookinfo.svc"]
        );
    }

    #[tokio::test]
    async fn ip_literals_need_no_nameserver_and_names_do() {
        let r = Resolver::parse("/nowhere", "");
        assert_eq!(
            r.lookup("10.1.2.3").await.unwrap(),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        let err = r.lookup("details").await.unwrap_err().to_string();
        assert_eq!(err, "cannot resolve details: no nameserver in /nowhere");
    }

    #[tokio::test]
    async fn asks_the_nameserver_through_the_search_list() {
        // A nameserver that knows one name and says NXDOMAIN to the rest.
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            while let Ok((n, from)) = server.recv_from(&mut buf).await {
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut a = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
                let query = q.queries[0].clone();
                if query.name().to_ascii() == "details.bookinfo.svc.cluster.local." {
                    a.add_answer(hickory_proto::rr::Record::from_rdata(
                        query.name().clone(),
                        5,
                        RData::A(hickory_proto::rr::rdata::A("10.96.0.7".parse().unwrap())),
                    ));
                } else {
                    a.metadata.response_code = ResponseCode::NXDomain;
                }
                a.add_query(query);
                server.send_to(&a.to_vec().unwrap(), from).await.unwrap();
            }
        });
        let conf = "nameserver 127.0.0.1\nsearch bookinfo.svc.cluster.local svc.cluster.local\noptions ndots:5\n";
        let mut r = Resolver::parse("test", conf);
        r.nameservers = vec![addr];
        assert_eq!(
            r.lookup("details").await.unwrap(),
            "10.96.0.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            r.lookup("details.bookinfo").await.unwrap(),
            "10.96.0.7".parse::<IpAddr>().unwrap()
        );
        let err = r.lookup("nope").await.unwrap_err().to_string();
        assert!(err.contains("no A record for any of"), "{err}");
    }
}

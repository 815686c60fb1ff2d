//! The HBONE request and response contract, free of I/O: building a CONNECT request, checking
//! an incoming one, and the refusal statuses.

use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};

use crate::Identity;

/// Response header carrying a human-readable refusal reason next to the status code.
pub(crate) const REASON_HEADER: &str = "amesh-refusal-reason";

/// A CONNECT request as the server's handler sees it, after the mTLS handshake.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// `:authority` of the CONNECT: the original destination, `ip:port` or `host:port`.
    pub authority: http::uri::Authority,
    /// The verified SPIFFE identity of the client.
    pub peer_identity: Identity,
    /// Address the TCP connection came from.
    pub peer_addr: SocketAddr,
    /// Address the TCP connection was accepted on (with eBPF steering, the original destination).
    pub local_addr: SocketAddr,
    /// All request headers (`forwarded`, `traceparent`, `baggage`, ...).
    pub headers: HeaderMap,
}

impl ConnectRequest {
    /// The target as a socket address, when the authority is `ip:port`.
    pub fn target_addr(&self) -> Option<SocketAddr> {
        self.authority.as_str().parse().ok()
    }

    /// The client address the peer *claims* in `forwarded: for="ip:port"`, when present and
    /// valid. Information for logs only, never a credential: the address a destination
    /// authorizes, reports and connects from is [`ConnectRequest::peer_addr`] (see the wire
    /// contract, "What a destination trusts").
    pub fn forwarded_for(&self) -> Option<SocketAddr> {
        self.forwarded_param("for")?.parse().ok()
    }

    /// The service hostname the client says it addressed, from `forwarded: ...;host=<hostname>`.
    /// Information: a destination uses it only for a service it really serves.
    pub fn forwarded_host(&self) -> Option<&str> {
        self.forwarded_param("host").filter(|h| !h.is_empty())
    }

    fn forwarded_param(&self, name: &str) -> Option<&str> {
        let value = self.headers.get(http::header::FORWARDED)?.to_str().ok()?;
        value.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim_matches('"'))
        })
    }
}

/// Why a server refuses a tunnel; each maps to the HBONE status code on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400: the request is not a valid HBONE CONNECT (bad authority, unknown target).
    BadRequest,
    /// 401: the destination's authorization policy denies the peer.
    Denied,
    /// 503: the target could not be reached.
    Unavailable,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::BadRequest => StatusCode::BAD_REQUEST,
            Refusal::Denied => StatusCode::UNAUTHORIZED,
            Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// `forwarded: for="<ip:port>"`, with `;host=<hostname>` when the service is known.
pub fn forwarded_header(client: SocketAddr, host: Option<&str>) -> HeaderValue {
    let value = match host {
        Some(h) => format!("for=\"{client}\";host={h}"),
        None => format!("for=\"{client}\""),
    };
    // Socket addresses and hostnames are visible ASCII; a caller-supplied hostname with control
    // characters is dropped rather than failing the tunnel.
    HeaderValue::from_str(&value).unwrap_or_else(|_| {
        HeaderValue::from_str(&format!("for=\"{client}\"")).expect("socket address is ASCII")
    })
}

/// A W3C `traceparent` starting a new trace: version `00`, a random 16-byte trace id, a random
/// 8-byte parent id, flags `00` (not sampled), as Istio's ztunnel sends on each CONNECT.
pub fn traceparent_header() -> HeaderValue {
    use rand::Rng;
    let mut rng = rand::rng();
    // All-zero ids are invalid in W3C trace context; a random one is zero with probability
    // 2^-128 (2^-64), but a zero would make the header invalid, so it is replaced.
    let trace: u128 = rng.random::<u128>().max(1);
    let parent: u64 = rng.random::<u64>().max(1);
    HeaderValue::from_str(&format!("00-{trace:032x}-{parent:016x}-00"))
        .expect("hex digits are a valid header value")
}

/// Istio's `baggage` for a CONNECT from `source`: `k8s.cluster.name`, `k8s.namespace.name`,
/// `k8s.<kind>.name` (`deployment`, `cronjob`, `pod`, `job`), `service.name` (the canonical
/// service) and `service.version` (the canonical revision). An empty value, or one with
/// characters W3C baggage would need escaped, is left out. `None` when nothing is known.
/// Information for telemetry only: a destination never takes identity from it.
pub fn baggage_header(source: &crate::state::Workload) -> Option<HeaderValue> {
    let kind = match source.workload_type {
        crate::state::WorkloadType::Deployment => "deployment",
        crate::state::WorkloadType::CronJob => "cronjob",
        crate::state::WorkloadType::Pod => "pod",
        crate::state::WorkloadType::Job => "job",
    };
    let workload_key = format!("k8s.{kind}.name");
    let entries = [
        ("k8s.cluster.name", source.cluster_id.as_str()),
        ("k8s.namespace.name", source.namespace.as_str()),
        (workload_key.as_str(), source.workload_name.as_str()),
        ("service.name", source.canonical_name.as_str()),
        ("service.version", source.canonical_revision.as_str()),
    ];
    let value = entries
        .iter()
        .filter(|(_, v)| {
            !v.is_empty()
                && v.bytes().all(|b| {
                    b.is_ascii_graphic() && !matches!(b, b',' | b';' | b'=' | b'%' | b'"' | b'\\')
                })
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    if value.is_empty() {
        return None;
    }
    HeaderValue::from_str(&value).ok()
}

/// The headers of a CONNECT from a captured app: `forwarded` (see [`forwarded_header`]), a
/// fresh `traceparent`, and `baggage` describing `source` when it is known.
pub fn connect_headers(
    client: SocketAddr,
    host: Option<&str>,
    source: Option<&crate::state::Workload>,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::FORWARDED, forwarded_header(client, host));
    headers.insert("traceparent", traceparent_header());
    if let Some(baggage) = source.and_then(baggage_header) {
        headers.insert("baggage", baggage);
    }
    headers
}

/// Builds the CONNECT request for a tunnel to `authority`.
pub fn build_connect(
    authority: &str,
    headers: &HeaderMap,
) -> Result<Request<()>, crate::hbone::HboneError> {
    let authority: http::uri::Authority = authority.parse().map_err(|e| {
        crate::hbone::HboneError::BadRequest(format!("authority {authority:?}: {e}"))
    })?;
    if authority.port_u16().is_none() {
        return Err(crate::hbone::HboneError::BadRequest(format!(
            "authority {authority:?} has no port"
        )));
    }
    let uri = http::Uri::builder()
        .authority(authority)
        .build()
        .map_err(|e| crate::hbone::HboneError::BadRequest(e.to_string()))?;
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(uri)
        .body(())
        .map_err(|e| crate::hbone::HboneError::BadRequest(e.to_string()))?;
    *req.headers_mut() = headers.clone();
    Ok(req)
}

/// What the server does with an incoming request before a handler sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum Inspection {
    /// A well-formed CONNECT to this authority.
    Connect(http::uri::Authority),
    /// A CONNECT that cannot be served: answer 400 on this stream only.
    BadConnect(String),
    /// Not HBONE at all: the peer is not speaking our protocol; close the connection.
    NotConnect(Method),
}

/// Sorts an incoming request into [`Inspection`]; the first thing the server does with a stream.
pub fn inspect<B>(req: &Request<B>) -> Inspection {
    if req.method() != Method::CONNECT {
        return Inspection::NotConnect(req.method().clone());
    }
    match req.uri().authority() {
        Some(a) if a.port_u16().is_some() => Inspection::Connect(a.clone()),
        Some(a) => Inspection::BadConnect(format!("authority {a} has no port")),
        None => Inspection::BadConnect("CONNECT without :authority".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_request_shape() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::FORWARDED,
            forwarded_header("10.0.0.1:4000".parse().unwrap(), Some("svc.ns.svc")),
        );
        let req = build_connect("10.0.0.2:80", &h).unwrap();
        assert_eq!(req.method(), Method::CONNECT);
        assert_eq!(req.uri().authority().unwrap().as_str(), "10.0.0.2:80");
        assert_eq!(
            req.headers()[http::header::FORWARDED],
            "for=\"10.0.0.1:4000\";host=svc.ns.svc"
        );
        assert_eq!(
            inspect(&req),
            Inspection::Connect("10.0.0.2:80".parse().unwrap())
        );
        assert!(matches!(
            build_connect("10.0.0.2", &h),
            Err(crate::hbone::HboneError::BadRequest(_))
        ));
        assert!(matches!(
            build_connect("not an authority", &h),
            Err(crate::hbone::HboneError::BadRequest(_))
        ));
    }

    #[test]
    fn inspect_refuses_non_connect() {
        let req = Request::get("http://x/").body(()).unwrap();
        assert_eq!(inspect(&req), Inspection::NotConnect(Method::GET));
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri("example.com")
            .body(())
            .unwrap();
        assert!(matches!(inspect(&req), Inspection::BadConnect(_)));
    }

    #[test]
    fn forwarded_for_parses() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::FORWARDED,
            HeaderValue::from_static("for=\"[fd00::1]:5000\";host=a.b"),
        );
        let req = ConnectRequest {
            authority: "10.0.0.2:80".parse().unwrap(),
            peer_identity: "spiffe://td/ns/a/sa/b".parse().unwrap(),
            peer_addr: "10.0.0.9:1".parse().unwrap(),
            local_addr: "10.0.0.2:15008".parse().unwrap(),
            headers,
        };
        assert_eq!(req.forwarded_for(), Some("[fd00::1]:5000".parse().unwrap()));
        assert_eq!(req.forwarded_host(), Some("a.b"));
        assert_eq!(req.target_addr(), Some("10.0.0.2:80".parse().unwrap()));
    }
}

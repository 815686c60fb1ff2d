//! Checks that the API server would make at `kubectl apply` time: those of the security
//! kinds' CRD schema and Istio's validating webhook, and the address checks of EndpointSlices.
//! An object failing them is rejected when loaded, so translation only sees well-formed
//! values: a port that is not a number can then never turn into "any port", nor an address
//! of the wrong family into an endpoint.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::security::{
    AuthorizationAction, AuthorizationPolicySpec, Condition, Operation, PeerAuthenticationSpec,
    RequestAuthenticationSpec, Source,
};

/// `when` keys ztunnel can evaluate (connection attributes); every other known key needs HTTP.
pub const L4_CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
];

/// `when` keys Istio knows, exactly.
const KNOWN_CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

/// A rejected field: where (serde-style path) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.rules[0].to[0].operation.ports[1]`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// The checks Istio's admission webhook (or the API server) makes, for the kinds that have
/// them. Every source (the folder, the Kubernetes API) runs each typed object through this one
/// function, so a check added here guards all of them.
pub fn object(object: &super::Object) -> Result<(), FieldError> {
    metadata(object)?;
    match object {
        super::Object::Pod(p) => service_account_name(
            "spec.serviceAccountName",
            p.spec
                .as_ref()
                .and_then(|s| s.service_account_name.as_deref()),
        ),
        super::Object::Deployment(d) => service_account_name(
            "spec.template.spec.serviceAccountName",
            d.spec
                .template
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.as_deref()),
        ),
        super::Object::Service(svc) => service_ports(svc),
        super::Object::AuthorizationPolicy(p) => authorization_policy(&p.spec),
        super::Object::PeerAuthentication(p) => peer_authentication(&p.spec),
        super::Object::RequestAuthentication(p) => request_authentication(&p.spec),
        super::Object::EndpointSlice(s) => endpoint_slice(s),
        super::Object::VirtualService(v) => super::networking::validate_virtual_service(&v.spec),
        super::Object::DestinationRule(d) => super::networking::validate_destination_rule(&d.spec),
        super::Object::HttpLocalRateLimitPolicy(p) => super::ratelimit::validate(&p.spec),
        _ => Ok(()),
    }
}

/// Names as the API server admits them: a namespace (and a Namespace's name) is a DNS-1123
/// label, every other name a DNS-1123 subdomain. A folder has no API server in front of it, and
/// these names become SPIFFE identities and xDS resource names: one that ztunnel refuses (a
/// namespace with a space) would have it NACK the controller's whole push.
fn metadata(object: &super::Object) -> Result<(), FieldError> {
    let meta = object.metadata();
    if let Some(name) = meta.name.as_deref().filter(|n| !n.is_empty()) {
        let fits = match object {
            super::Object::Namespace(_) => is_dns_label(name),
            _ => is_dns_subdomain(name),
        };
        if !fits {
            return Err(err(
                "metadata.name",
                format!("{name:?} is not a valid name: {NAME_RULE}"),
            ));
        }
    }
    if object.is_cluster_scoped() {
        return Ok(());
    }
    match meta.namespace.as_deref().filter(|n| !n.is_empty()) {
        Some(ns) if !is_dns_label(ns) => Err(err(
            "metadata.namespace",
            format!("{ns:?} is not a valid namespace: {LABEL_RULE}"),
        )),
        _ => Ok(()),
    }
}

/// A pod's service account names its identity; the API server admits only a DNS-1123
/// subdomain there.
fn service_account_name(field: &str, name: Option<&str>) -> Result<(), FieldError> {
    match name.filter(|n| !n.is_empty()) {
        Some(sa) if !is_dns_subdomain(sa) => Err(err(
            field,
            format!("{sa:?} is not a valid service account name: {NAME_RULE}"),
        )),
        _ => Ok(()),
    }
}

const LABEL_RULE: &str =
    "at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit";
const NAME_RULE: &str = "at most 253 characters, dot-separated parts of lowercase letters, \
     digits and '-', each starting and ending with a letter or digit";

/// RFC 1123 label, as Kubernetes checks it.
pub fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=63).contains(&bytes.len())
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
}

/// RFC 1123 subdomain (dot-separated labels), as Kubernetes checks it.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A Service's ports are unique by (port, protocol), as the API server requires: a port twice
/// would reach ztunnel as a Service it refuses, NACKing the whole Address push.
fn service_ports(svc: &k8s_openapi::api::core::v1::Service) -> Result<(), FieldError> {
    let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
    let mut seen = std::collections::HashSet::new();
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let protocol = p.protocol.as_deref().unwrap_or("TCP");
        if !seen.insert((p.port, protocol)) {
            return Err(err(
                format!("spec.ports[{i}]"),
                format!("port {} ({protocol}) is listed twice", p.port),
            ));
        }
    }
    Ok(())
}

/// `addressType` values of an EndpointSlice.
pub const ADDRESS_TYPES: [&str; 3] = ["IPv4", "IPv6", "FQDN"];

/// Validates an EndpointSlice as the API server does: a known `addressType`, at least one
/// address per endpoint, and, in IPv4 and IPv6 slices, addresses of that family. (A folder
/// has no API server in front of it; through the Kubernetes API these never fail.)
pub fn endpoint_slice(slice: &EndpointSlice) -> Result<(), FieldError> {
    let family = slice.address_type.as_str();
    if !ADDRESS_TYPES.contains(&family) {
        return Err(err(
            "addressType",
            format!("{family:?} is not one of IPv4, IPv6, FQDN"),
        ));
    }
    for (i, endpoint) in slice.endpoints.iter().flatten().enumerate() {
        if endpoint.addresses.is_empty() {
            return Err(err(
                format!("endpoints[{i}].addresses"),
                "an endpoint needs at least one address",
            ));
        }
        for (j, text) in endpoint.addresses.iter().enumerate() {
            let fits = match family {
                "IPv4" => text.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4()),
                "IPv6" => text.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6()),
                _ => true,
            };
            if !fits {
                return Err(err(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!("{text:?} is not an {family} address (the slice's addressType)"),
                ));
            }
        }
    }
    Ok(())
}

/// Validates an AuthorizationPolicy spec.
pub fn authorization_policy(spec: &AuthorizationPolicySpec) -> Result<(), FieldError> {
    if spec.selector.is_some() && spec.all_target_refs().next().is_some() {
        return Err(err(
            "spec.selector",
            "selector and targetRef(s) are mutually exclusive",
        ));
    }
    match (spec.action, &spec.provider) {
        (Some(AuthorizationAction::Custom), None) => {
            return Err(err("spec.provider", "action CUSTOM needs a provider"));
        }
        (action, Some(_)) if action != Some(AuthorizationAction::Custom) => {
            return Err(err(
                "spec.provider",
                "a provider is only valid with action CUSTOM",
            ));
        }
        _ => {}
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            let at = format!("{at}.from[{j}].source");
            match &from.source {
                None => return Err(err(at, "a source is required")),
                Some(source) => self::source(&at, source)?,
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let at = format!("{at}.to[{j}].operation");
            match &to.operation {
                None => return Err(err(at, "an operation is required")),
                Some(op) => operation(&at, op)?,
            }
        }
        for (j, cond) in rule.when.iter().enumerate() {
            condition(&format!("{at}.when[{j}]"), cond)?;
        }
    }
    Ok(())
}

fn source(at: &str, s: &Source) -> Result<(), FieldError> {
    let all = [
        &s.principals,
        &s.not_principals,
        &s.request_principals,
        &s.not_request_principals,
        &s.namespaces,
        &s.not_namespaces,
        &s.service_accounts,
        &s.not_service_accounts,
        &s.ip_blocks,
        &s.not_ip_blocks,
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
    ];
    if all.iter().all(|v| v.is_empty()) {
        return Err(err(at, "a source must set at least one field"));
    }
    for (name, values) in [
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ] {
        for (k, v) in values.iter().enumerate() {
            ip_block(&format!("{at}.{name}[{k}]"), v)?;
        }
    }
    for (name, values) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        for (k, v) in values.iter().enumerate() {
            if parse_service_account(v).is_none() {
                return Err(err(
                    format!("{at}.{name}[{k}]"),
                    format!("{v:?} is not <namespace>/<service account>"),
                ));
            }
        }
    }
    Ok(())
}

fn operation(at: &str, op: &Operation) -> Result<(), FieldError> {
    let all = [
        &op.hosts,
        &op.not_hosts,
        &op.ports,
        &op.not_ports,
        &op.methods,
        &op.not_methods,
        &op.paths,
        &op.not_paths,
    ];
    if all.iter().all(|v| v.is_empty()) {
        return Err(err(at, "an operation must set at least one field"));
    }
    for (name, values) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
        for (k, v) in values.iter().enumerate() {
            port(&format!("{at}.{name}[{k}]"), v)?;
        }
    }
    Ok(())
}

fn condition(at: &str, c: &Condition) -> Result<(), FieldError> {
    let key = c.key.as_str();
    let bracketed = |prefix: &str| key.starts_with(prefix) && key.ends_with(']');
    let known = KNOWN_CONDITION_KEYS.contains(&key)
        || bracketed("request.headers[")
        || bracketed("request.auth.claims[")
        || key.starts_with("experimental.envoy.filters.");
    if !known {
        return Err(err(
            format!("{at}.key"),
            format!("unknown attribute {:?}", c.key),
        ));
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(err(at, "a condition needs values or notValues"));
    }
    for (name, values) in [("values", &c.values), ("notValues", &c.not_values)] {
        for (k, v) in values.iter().enumerate() {
            let at = format!("{at}.{name}[{k}]");
            match c.key.as_str() {
                "destination.port" => port(&at, v)?,
                "source.ip" | "destination.ip" | "remote.ip" => ip_block(&at, v)?,
                _ => {}
            }
        }
    }
    Ok(())
}

fn port(at: &str, v: &str) -> Result<(), FieldError> {
    parse_port(v)
        .map(|_| ())
        .ok_or_else(|| err(at, format!("{v:?} is not a port number (1-65535)")))
}

fn ip_block(at: &str, v: &str) -> Result<(), FieldError> {
    parse_ip_block(v)
        .map(|_| ())
        .ok_or_else(|| err(at, format!("{v:?} is not an IP address or CIDR block")))
}

/// Parses a port written as a string in Istio's API.
pub fn parse_port(v: &str) -> Option<u16> {
    v.trim().parse::<u16>().ok().filter(|p| *p != 0)
}

/// Parses `10.0.0.1` (a /32 or /128) or `10.0.0.0/16`.
pub fn parse_ip_block(v: &str) -> Option<IpNet> {
    let v = v.trim();
    if v.contains('/') {
        v.parse::<IpNet>().ok()
    } else {
        v.parse::<IpAddr>().ok().map(IpNet::from)
    }
}

/// Parses `<namespace>/<service account>`.
pub fn parse_service_account(v: &str) -> Option<(&str, &str)> {
    let (ns, sa) = v.split_once('/')?;
    let valid = |s: &str| !s.is_empty() && !s.contains(['/', '*']);
    (valid(ns) && valid(sa)).then_some((ns, sa))
}

/// Validates a PeerAuthentication spec.
pub fn peer_authentication(spec: &PeerAuthenticationSpec) -> Result<(), FieldError> {
    let has_selector = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if !spec.port_level_mtls.is_empty() && !has_selector {
        return Err(err(
            "spec.portLevelMtls",
            "port-level mTLS needs a workload selector (spec.selector.matchLabels)",
        ));
    }
    Ok(())
}

/// Validates a RequestAuthentication spec.
pub fn request_authentication(spec: &RequestAuthenticationSpec) -> Result<(), FieldError> {
    if spec.selector.is_some() && (spec.target_ref.is_some() || !spec.target_refs.is_empty()) {
        return Err(err(
            "spec.selector",
            "selector and targetRef(s) are mutually exclusive",
        ));
    }
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        if rule.issuer.trim().is_empty() {
            return Err(err(
                format!("spec.jwtRules[{i}].issuer"),
                "must not be empty",
            ));
        }
        if rule.jwks.is_some() && rule.jwks_uri.is_some() {
            return Err(err(
                format!("spec.jwtRules[{i}].jwks"),
                "jwks and jwksUri are mutually exclusive",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_blocks() {
        assert_eq!(parse_port("8080"), Some(8080));
        assert_eq!(parse_port("0"), None);
        assert_eq!(parse_port("eighty"), None);
        assert_eq!(parse_port("70000"), None);
        assert_eq!(
            parse_ip_block("10.0.0.1").map(|n| n.to_string()),
            Some("10.0.0.1/32".into())
        );
        assert_eq!(
            parse_ip_block("fd00::/8").map(|n| n.to_string()),
            Some("fd00::/8".into())
        );
        assert!(parse_ip_block("10.0.0.0/33").is_none());
        assert_eq!(parse_service_account("ns/sa"), Some(("ns", "sa")));
        assert!(parse_service_account("sa").is_none());
        assert!(parse_service_account("ns/*").is_none());
    }

    /// Found by the `manifests` fuzz target: this pod loaded, and its workload carried an
    /// identity ztunnel refuses, so ztunnel NACKed the whole Address push with it.
    #[test]
    fn a_pod_in_a_namespace_with_a_space_is_refused_at_load() {
        let text = "apiVersion: v1\nkind: Pod\n\
            metadata: {name: strict, namespace: nme lenient, labels: {app: strict}}\n\
            spec: {nodeName: node-1, containers: [{name: c, image: echo}]}\n\
            status: {podIP: 10.244.1.6}\n";
        let loaded = crate::manifests::load_yaml("fuzz.yaml", text);
        assert!(loaded.manifests.is_empty());
        let error = loaded
            .errors
            .first()
            .expect("the pod is refused")
            .to_string();
        assert!(error.contains("metadata.namespace"), "{error}");
        let text = text
            .replace("nme lenient", "lenient")
            .replace("name: strict", "name: Strict");
        let error = crate::manifests::load_yaml("fuzz.yaml", &text).errors[0].to_string();
        assert!(error.contains("metadata.name"), "{error}");
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop}\n\
            spec: {serviceAccountName: 'a b', containers: [{name: c, image: echo}]}\n";
        let error = crate::manifests::load_yaml("fuzz.yaml", text).errors[0].to_string();
        assert!(error.contains("spec.serviceAccountName"), "{error}");
    }

    /// Found by the `manifests` fuzz target: port 9090 twice made a Service ztunnel refuses.
    #[test]
    fn a_service_port_listed_twice_is_refused_at_load() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
            spec:\n  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports:\n\
            \x20 - {name: grpc-admin, port: 9090, targetPort: 9091}\n\
            \x20 - {name: dns, port: 53, protocol: UDP}\n\
            \x20 - {name: dns-tcp, port: 53}\n\
            \x20 - {name: grpc-admin, port: 9090, targetPort: 9091}\n";
        let loaded = crate::manifests::load_yaml("fuzz.yaml", text);
        assert!(loaded.manifests.is_empty());
        let error = loaded
            .errors
            .first()
            .expect("the service is refused")
            .to_string();
        assert!(error.contains("spec.ports[3]"), "{error}");
        // The same port over TCP and UDP is two ports.
        let once = text.replace("  - {name: grpc-admin, port: 9090, targetPort: 9091}\n", "");
        let once = format!("{once}  - {{name: grpc-admin, port: 9090, targetPort: 9091}}\n");
        let loaded = crate::manifests::load_yaml("fuzz.yaml", &once);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    }

    #[test]
    fn kubernetes_names() {
        for good in ["a", "shop", "web-0", "a1-b2", &"x".repeat(63)] {
            assert!(is_dns_label(good), "{good:?}");
            assert!(is_dns_subdomain(good), "{good:?}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "nme lenient",
            "a_b",
            "a.b",
            &"x".repeat(64),
        ] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
        assert!(is_dns_subdomain("web.shop-1.example"));
        for bad in ["", "a..b", ".a", "a.", "a b", "a/b", "Web"] {
            assert!(!is_dns_subdomain(bad), "{bad:?}");
        }
    }
}

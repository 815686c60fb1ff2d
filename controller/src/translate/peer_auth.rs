//! PeerAuthentication → DENY `istio.security.Authorization`s, the way Istio's control plane
//! encodes mTLS modes for ztunnel (which has no notion of "mode", only of policy).
//!
//! The effective mode of a pod is the first set one of: the oldest PeerAuthentication in its
//! namespace whose selector picks it (workload level), the oldest one in its namespace without
//! selector (namespace level), the oldest one in the root namespace without selector (mesh
//! level), PERMISSIVE. DISABLE counts as PERMISSIVE: ztunnel then accepts plaintext. A
//! workload-level policy may add per-port modes (`portLevelMtls`, keyed by target port).
//!
//! Resources produced:
//!
//! - `<root ns>/istio_converted_static_strict`, always: DENY, scope `WORKLOAD_SELECTOR`, one
//!   rule with one match `not_principals: [presence]` — "deny connections without a peer
//!   identity". Every pod whose effective mode is STRICT with no port exception lists it in
//!   its `authorization_policies`. (STRICT from the mesh or a namespace is therefore expressed
//!   per workload, as Istio does.)
//! - `<ns>/converted_peer_authentication_<name>`, for a workload-level policy whose
//!   `portLevelMtls` has a port whose mode differs from the policy's effective top-level mode
//!   (its own `mtls.mode`, else the namespace's, else the mesh's): DENY, scope
//!   `WORKLOAD_SELECTOR`, one rule with one match:
//!   - top-level STRICT: `not_principals: [presence]`, `not_destination_ports: [the PERMISSIVE
//!     or DISABLE ports]` — plaintext is denied except on those ports;
//!   - top-level PERMISSIVE/DISABLE: `not_principals: [presence]`, `destination_ports: [the
//!     STRICT ports]` — plaintext is denied on those ports only.
//!
//!   Pods for which that policy is the effective workload-level one list it instead of the
//!   static policy.
//!
//! PERMISSIVE and DISABLE produce nothing: with no DENY on missing identity, plaintext passes.
//! Policies with a selector in the root namespace are ignored, as in Istio's ambient mode.

use std::collections::BTreeMap;

use amesh_proto::istio::security::{
    string_match::MatchType, Action, Authorization, Clause, Match, Rule, Scope, StringMatch,
};

use super::TranslateOptions;
use crate::manifests::security::MtlsMode;
use crate::manifests::{Manifests, ObjectKey, PeerAuthentication};
use crate::model::{labels, PodInfo};
use crate::warnings::Warnings;

/// Name of the mesh-wide "deny without identity" policy (underscores cannot clash with
/// Kubernetes names).
pub const STATIC_STRICT_POLICY: &str = "istio_converted_static_strict";
/// Name prefix of policies converted from workload-level PeerAuthentications.
pub const CONVERTED_PREFIX: &str = "converted_peer_authentication_";

/// The PeerAuthentications of the mesh, indexed by level.
#[derive(Debug)]
pub struct PeerAuthn<'a> {
    root_namespace: String,
    /// The effective mesh-level policy.
    mesh: Option<&'a PeerAuthentication>,
    /// The effective namespace-level policy of each namespace.
    namespaces: BTreeMap<&'a str, &'a PeerAuthentication>,
    /// Workload-level policies by namespace, oldest first.
    workloads: BTreeMap<&'a str, Vec<(&'a ObjectKey, &'a PeerAuthentication)>>,
    /// Converted port-level policies, by the key of their PeerAuthentication.
    converted: BTreeMap<&'a ObjectKey, Authorization>,
}

impl<'a> PeerAuthn<'a> {
    /// Indexes the policies and converts the port-level ones.
    pub fn build(m: &'a Manifests, opts: &TranslateOptions, warnings: &mut Warnings) -> Self {
        let root = opts.root_namespace.as_str();
        let mut mesh: Vec<(&ObjectKey, &PeerAuthentication)> = Vec::new();
        let mut namespaces: BTreeMap<&str, Vec<(&ObjectKey, &PeerAuthentication)>> =
            BTreeMap::new();
        let mut workloads: BTreeMap<&str, Vec<(&ObjectKey, &PeerAuthentication)>> = BTreeMap::new();
        for (key, pa) in &m.peer_authentications {
            let has_selector = pa
                .spec
                .selector
                .as_ref()
                .is_some_and(|s| !s.match_labels.is_empty());
            match (has_selector, key.namespace == root) {
                (false, true) => mesh.push((key, pa)),
                (false, false) => namespaces.entry(&key.namespace).or_default().push((key, pa)),
                (true, false) => workloads.entry(&key.namespace).or_default().push((key, pa)),
                (true, true) => warnings.push(format!(
                    "PeerAuthentication {key}: a selector in the root namespace is ignored in ambient mode; move it to the workloads' namespace"
                )),
            }
        }
        let mesh = oldest(mesh, "the mesh", warnings);
        let namespaces = namespaces
            .into_iter()
            .filter_map(|(ns, list)| {
                Some((ns, oldest(list, &format!("namespace {ns}"), warnings)?))
            })
            .collect();
        for list in workloads.values_mut() {
            list.sort_by(age_order);
        }
        let mut index = PeerAuthn {
            root_namespace: root.to_owned(),
            mesh,
            namespaces,
            workloads,
            converted: BTreeMap::new(),
        };
        let converted = index
            .workloads
            .values()
            .flatten()
            .filter_map(|(key, pa)| Some((*key, index.convert(key, pa)?)))
            .collect();
        index.converted = converted;
        index
    }

    /// The converted resources: the static STRICT policy and the port-level ones.
    pub fn authorizations(&self) -> Vec<(String, Authorization)> {
        let static_strict = Authorization {
            name: STATIC_STRICT_POLICY.to_owned(),
            namespace: self.root_namespace.clone(),
            scope: Scope::WorkloadSelector as i32,
            action: Action::Deny as i32,
            rules: vec![deny_plaintext(Match::default())],
            dry_run: false,
            extensions: Vec::new(),
        };
        std::iter::once(static_strict)
            .chain(self.converted.values().cloned())
            .map(|a| (format!("{}/{}", a.namespace, a.name), a))
            .collect()
    }

    /// Names of the converted policies (`<ns>/<name>`) that apply to `pod`.
    pub fn policies_for(&self, pod: &PodInfo, warnings: &mut Warnings) -> Vec<String> {
        let ns = pod.key.namespace.as_str();
        let mut selecting = self
            .workloads
            .get(ns)
            .into_iter()
            .flatten()
            .filter(|(_, pa)| selector_picks(pa, &pod.labels));
        let workload = selecting.next();
        if let (Some((winner, _)), Some((loser, _))) = (workload, selecting.next()) {
            warnings.push(format!(
                "PeerAuthentications {winner} and {loser} both select pod {}; the oldest, {winner}, applies",
                pod.key
            ));
        }
        let inherited = self.namespace_mode(ns);
        let Some((key, pa)) = workload else {
            return self.static_if(inherited == MtlsMode::Strict);
        };
        if let Some(converted) = self.converted.get(key) {
            return vec![format!("{}/{}", converted.namespace, converted.name)];
        }
        let top = set_mode(pa.spec.mtls.as_ref().map(|m| m.mode())).unwrap_or(inherited);
        self.static_if(top == MtlsMode::Strict)
    }

    fn static_if(&self, strict: bool) -> Vec<String> {
        if strict {
            vec![format!("{}/{STATIC_STRICT_POLICY}", self.root_namespace)]
        } else {
            Vec::new()
        }
    }

    /// Mode inherited by pods of `namespace` from the namespace and mesh levels, DISABLE folded
    /// into PERMISSIVE.
    fn namespace_mode(&self, namespace: &str) -> MtlsMode {
        let mode_of = |pa: Option<&&PeerAuthentication>| {
            set_mode(pa.and_then(|pa| pa.spec.mtls.as_ref()).map(|m| m.mode()))
        };
        let ns_level = if namespace == self.root_namespace {
            None
        } else {
            mode_of(self.namespaces.get(namespace))
        };
        ns_level
            .or_else(|| mode_of(self.mesh.as_ref()))
            .unwrap_or(MtlsMode::Permissive)
    }

    /// The DENY policy for a workload-level PeerAuthentication whose ports differ from its
    /// top-level mode; `None` when they do not.
    fn convert(&self, key: &ObjectKey, pa: &PeerAuthentication) -> Option<Authorization> {
        let top = set_mode(pa.spec.mtls.as_ref().map(|m| m.mode()))
            .unwrap_or_else(|| self.namespace_mode(&key.namespace));
        let exceptions: Vec<u32> = pa
            .spec
            .port_level_mtls
            .iter()
            .filter_map(|(port, mtls)| {
                let mode = set_mode(Some(mtls.mode()))?;
                (mode != top).then_some(u32::from(port.0))
            })
            .collect();
        if exceptions.is_empty() {
            return None;
        }
        let ports = if top == MtlsMode::Strict {
            Match {
                not_destination_ports: exceptions,
                ..Match::default()
            }
        } else {
            Match {
                destination_ports: exceptions,
                ..Match::default()
            }
        };
        Some(Authorization {
            name: format!("{CONVERTED_PREFIX}{}", key.name),
            namespace: key.namespace.clone(),
            scope: Scope::WorkloadSelector as i32,
            action: Action::Deny as i32,
            rules: vec![deny_plaintext(ports)],
            dry_run: false,
            extensions: Vec::new(),
        })
    }
}

/// A rule matching connections without a peer identity, within `extra` (ports).
fn deny_plaintext(extra: Match) -> Rule {
    let presence = StringMatch {
        match_type: Some(MatchType::Presence(())),
    };
    Rule {
        clauses: vec![Clause {
            matches: vec![Match {
                not_principals: vec![presence],
                ..extra
            }],
        }],
    }
}

/// A set mode, DISABLE folded into PERMISSIVE; `None` for UNSET (inherit).
fn set_mode(mode: Option<MtlsMode>) -> Option<MtlsMode> {
    match mode? {
        MtlsMode::Unset => None,
        MtlsMode::Strict => Some(MtlsMode::Strict),
        MtlsMode::Permissive | MtlsMode::Disable => Some(MtlsMode::Permissive),
    }
}

fn selector_picks(pa: &PeerAuthentication, pod_labels: &BTreeMap<String, String>) -> bool {
    pa.spec
        .selector
        .as_ref()
        .is_some_and(|s| labels::selects(&s.match_labels, pod_labels))
}

type Entry<'a> = (&'a ObjectKey, &'a PeerAuthentication);

/// Oldest first (creation time, then name), as Istio breaks ties between conflicting policies.
fn age_order(a: &Entry<'_>, b: &Entry<'_>) -> std::cmp::Ordering {
    let created = |e: &Entry<'_>| e.1.metadata.creation_timestamp.clone();
    // `None` (no timestamp, as in hand-written manifests) sorts first: such a policy was
    // "always there".
    created(a).cmp(&created(b)).then_with(|| a.0.cmp(b.0))
}

/// The oldest of several policies at one level, with a warning when there are several.
fn oldest<'a>(
    mut list: Vec<Entry<'a>>,
    level: &str,
    warnings: &mut Warnings,
) -> Option<&'a PeerAuthentication> {
    list.sort_by(age_order);
    if list.len() > 1 {
        let names: Vec<String> = list.iter().map(|(k, _)| k.to_string()).collect();
        warnings.push(format!(
            "several PeerAuthentications apply to {level} ({}); the oldest, {}, wins",
            names.join(", "),
            names[0]
        ));
    }
    list.first().map(|(_, pa)| *pa)
}

//! Objects the loader skips because amesh does not read their kind, and which of them deserve
//! a warning. A built-in Kubernetes kind that does not configure the mesh (a ConfigMap, a
//! StatefulSet) is expected in a folder of application manifests and skipped quietly; a mesh
//! kind amesh does not implement (a ServiceEntry, a TCPRoute) or a kind nobody knows (a
//! misspelt kind or apiVersion) is reported, since the user meant it to do something.

use std::fmt;
use std::path::PathBuf;

use super::error::ObjectRef;

/// An object skipped with a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedObject {
    /// The file that holds it.
    pub file: PathBuf,
    /// Where in the file, its kind, namespace and name.
    pub object: ObjectRef,
    /// Its `apiVersion`.
    pub api_version: String,
    /// Why it is skipped.
    pub reason: SkipReason,
}

/// Why an object is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// A kind of a mesh API (Istio, Gateway API) that amesh does not implement.
    Unsupported,
    /// A kind amesh does not know at all; `hint` names the apiVersion amesh reads a kind of
    /// that name under, if any.
    Unknown {
        /// e.g. `apps/v1` for a `Deployment` of another apiVersion.
        hint: Option<&'static str>,
    },
}

impl SkippedObject {
    /// What identifies the object across loads (its position in the file may move): a
    /// warning is logged once per key.
    pub fn key(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}",
            self.file.display(),
            self.api_version,
            self.object.kind.as_deref().unwrap_or_default(),
            self.object.namespace.as_deref().unwrap_or_default(),
            self.object.name.as_deref().unwrap_or_default(),
        )
    }
}

impl fmt::Display for SkippedObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.object.kind.as_deref().unwrap_or_default();
        write!(
            f,
            "{}: {}: {} {kind}",
            self.file.display(),
            self.object,
            self.api_version
        )?;
        match self.reason {
            SkipReason::Unsupported => write!(f, " is not supported by amesh; ignored"),
            SkipReason::Unknown { hint: Some(hint) } => write!(
                f,
                " is not a kind amesh knows; ignored (amesh reads {kind} as {hint})"
            ),
            SkipReason::Unknown { hint: None } => write!(
                f,
                " is not a kind amesh knows; ignored (a misspelt kind or apiVersion?)"
            ),
        }
    }
}

/// Built-in Kubernetes kinds that configure no part of the mesh, by API group (`""` is the
/// core group, apiVersion `v1`). Any version of the group counts.
const QUIET: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "ConfigMap",
            "Secret",
            "Endpoints",
            "PersistentVolume",
            "PersistentVolumeClaim",
            "ReplicationController",
            "LimitRange",
            "ResourceQuota",
            "Event",
            "PodTemplate",
        ],
    ),
    (
        "apps",
        &[
            "StatefulSet",
            "DaemonSet",
            "ReplicaSet",
            "ControllerRevision",
        ],
    ),
    ("batch", &["Job", "CronJob"]),
    (
        "networking.k8s.io",
        &["NetworkPolicy", "Ingress", "IngressClass"],
    ),
    ("policy", &["PodDisruptionBudget"]),
    (
        "rbac.authorization.k8s.io",
        &["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"],
    ),
    ("autoscaling", &["HorizontalPodAutoscaler"]),
    ("apiextensions.k8s.io", &["CustomResourceDefinition"]),
    (
        "admissionregistration.k8s.io",
        &[
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ],
    ),
    (
        "storage.k8s.io",
        &["StorageClass", "CSIDriver", "CSINode", "VolumeAttachment"],
    ),
    ("scheduling.k8s.io", &["PriorityClass"]),
    ("coordination.k8s.io", &["Lease"]),
    ("certificates.k8s.io", &["CertificateSigningRequest"]),
    ("apiregistration.k8s.io", &["APIService"]),
    ("node.k8s.io", &["RuntimeClass"]),
    ("events.k8s.io", &["Event"]),
    // Installed with the Gateway API; says which controller owns a class, nothing more.
    ("gateway.networking.k8s.io", &["GatewayClass"]),
];

/// API groups of the mesh whose other kinds amesh does not implement (security.istio.io and
/// policy.amesh.io are errors instead: see the loader).
const MESH_GROUPS: &[&str] = &[
    "networking.istio.io",
    "telemetry.istio.io",
    "extensions.istio.io",
    "gateway.networking.k8s.io",
    "install.istio.io",
];

/// The kinds amesh reads, with the apiVersions it reads them under (for the hint).
const READ: &[(&str, &str)] = &[
    ("Namespace", "v1"),
    ("Node", "v1"),
    ("Pod", "v1"),
    ("Service", "v1"),
    ("ServiceAccount", "v1"),
    ("EndpointSlice", "discovery.k8s.io/v1"),
    ("Deployment", "apps/v1"),
    ("Gateway", "gateway.networking.k8s.io/v1 or v1beta1"),
    ("HTTPRoute", "gateway.networking.k8s.io/v1 or v1beta1"),
    ("GRPCRoute", "gateway.networking.k8s.io/v1 or v1beta1"),
    (
        "VirtualService",
        "networking.istio.io/v1, v1beta1 or v1alpha3",
    ),
    (
        "DestinationRule",
        "networking.istio.io/v1, v1beta1 or v1alpha3",
    ),
];

/// How to skip an object of a kind amesh does not read: quietly (`None`) or with a warning.
pub(super) fn classify(api_version: &str, kind: &str) -> Option<SkipReason> {
    let group = match api_version.split_once('/') {
        Some((group, _)) => group,
        None if api_version == "v1" => "",
        // `v2`, `extensions`: no built-in group looks like that.
        None => api_version,
    };
    let quiet = QUIET
        .iter()
        .any(|(g, kinds)| *g == group && kinds.contains(&kind));
    if quiet {
        return None;
    }
    // Istio's own (ingress) Gateway is another kind than the Gateway API's: unsupported, not
    // a Gateway of the wrong apiVersion.
    if group == "networking.istio.io" && kind == "Gateway" {
        return Some(SkipReason::Unsupported);
    }
    if let Some((_, read_as)) = READ.iter().find(|(k, _)| *k == kind) {
        return Some(SkipReason::Unknown {
            hint: Some(read_as),
        });
    }
    if MESH_GROUPS.contains(&group) {
        return Some(SkipReason::Unsupported);
    }
    Some(SkipReason::Unknown { hint: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(classify("v1", "ConfigMap"), None);
        assert_eq!(classify("apps/v1", "StatefulSet"), None);
        assert_eq!(classify("policy/v1beta1", "PodDisruptionBudget"), None);
        assert_eq!(
            classify("networking.istio.io/v1", "ServiceEntry"),
            Some(SkipReason::Unsupported)
        );
        assert_eq!(
            classify("networking.istio.io/v1", "Gateway"),
            Some(SkipReason::Unsupported)
        );
        assert_eq!(
            classify("gateway.networking.k8s.io/v1alpha2", "TCPRoute"),
            Some(SkipReason::Unsupported)
        );
        assert_eq!(
            classify("cert-manager.io/v1", "Certificate"),
            Some(SkipReason::Unknown { hint: None })
        );
        // A misspelt core kind, and a kind amesh reads under another apiVersion.
        assert_eq!(
            classify("v1", "ConfgMap"),
            Some(SkipReason::Unknown { hint: None })
        );
        assert_eq!(
            classify("apps/v1beta1", "Deployment"),
            Some(SkipReason::Unknown {
                hint: Some("apps/v1")
            })
        );
        assert_eq!(
            classify("networking.istio.io/v2", "VirtualService"),
            Some(SkipReason::Unknown {
                hint: Some("networking.istio.io/v1, v1beta1 or v1alpha3")
            })
        );
        // A built-in kind under a group it is not in.
        assert_eq!(
            classify("apps/v1", "ConfigMap"),
            Some(SkipReason::Unknown { hint: None })
        );
    }
}

//! What a waypoint Gateway becomes, as istiod's waypoint template makes it: a ServiceAccount, a
//! Deployment running the `waypoint` binary and a Service in front of it, all named after the
//! Gateway, labelled with its name and owned by it. Their shape lives in one file,
//! [`TEMPLATE_FILE`], embedded at build time: plain YAML with `${NAME}` placeholders, filled per
//! Gateway from the Gateway and the [`WaypointSettings`] and read into the k8s-openapi types.
//! [`Template::check`] (run when the controller starts, and by the tests) proves the file yields
//! exactly one object of each kind with no field Kubernetes does not know, naming the file and
//! the field at fault otherwise. The render functions are pure: the reconciler compares and
//! applies what they return.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{EnvVar, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::WaypointSettings;
use crate::manifests::Gateway;
use crate::model::DEFAULT_HBONE_PORT;

/// `apiVersion` of the Gateways the deployer reads, and of its owner references to them.
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";
/// Istio's copy of the Gateway API's gateway-name label, on the waypoint's pods.
pub const ISTIO_GATEWAY_NAME: &str = "istio.io/gateway-name";
/// The value istiod writes in [`crate::model::labels::GATEWAY_MANAGED`] on what it makes for waypoints;
/// amesh writes the same, so tools that look for istiod's waypoints find amesh's.
pub const MANAGED_VALUE: &str = "istio.io-mesh-controller";
/// The waypoint container's name in the template (the one [`deployment`] adds settings to).
pub const CONTAINER: &str = "waypoint";
/// The template, from the repository's root.
pub const TEMPLATE_FILE: &str = "deploy/waypoint/waypoint.yaml";
/// Its text, as built into the binary.
pub const TEMPLATE_TEXT: &str = include_str!("../../../deploy/waypoint/waypoint.yaml");

/// The placeholders a template may use, each filled by [`Vars::of`].
pub const PLACEHOLDERS: [&str; 9] = [
    "GATEWAY_NAME",
    "GATEWAY_NAMESPACE",
    "GATEWAY_UID",
    "HBONE_PORT",
    "IMAGE",
    "CONTROL_ADDRESS",
    "TRUST_DOMAIN",
    "CLUSTER_ID",
    "CLUSTER_DOMAIN",
];

/// The Gateway's name and namespace (the names of everything made for it), its uid (for owner
/// references) and what its spec asks of the objects.
#[derive(Debug, Clone)]
pub struct WaypointGateway {
    /// Namespace of the Gateway and of its objects.
    pub namespace: String,
    /// Name of the Gateway and of its objects.
    pub name: String,
    /// The Gateway's uid.
    pub uid: String,
    /// `metadata.generation`, echoed in status conditions.
    pub generation: Option<i64>,
    /// Port of its HBONE listener ([`DEFAULT_HBONE_PORT`] without one).
    pub hbone_port: u16,
    /// `spec.infrastructure.labels`, copied onto every object and the pods.
    pub labels: BTreeMap<String, String>,
    /// `spec.infrastructure.annotations`, likewise.
    pub annotations: BTreeMap<String, String>,
}

impl WaypointGateway {
    /// The parts of `gateway` (in `namespace`, with `uid`) the objects depend on.
    pub fn of(gateway: &Gateway, namespace: &str, uid: &str) -> Self {
        let infrastructure = gateway.spec.infrastructure.as_ref();
        WaypointGateway {
            namespace: namespace.to_owned(),
            name: gateway.metadata.name.clone().unwrap_or_default(),
            uid: uid.to_owned(),
            generation: gateway.metadata.generation,
            hbone_port: gateway
                .spec
                .listeners
                .iter()
                .find(|l| l.protocol == "HBONE")
                .map_or(DEFAULT_HBONE_PORT, |l| l.port),
            labels: infrastructure.map(|i| i.labels.clone()).unwrap_or_default(),
            annotations: infrastructure
                .map(|i| i.annotations.clone())
                .unwrap_or_default(),
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The reference to the Gateway as the controller of an object (what the template's
    /// `ownerReferences` say; the deployer tells its own objects from others' by it).
    pub fn owner_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: GATEWAY_API_VERSION.to_owned(),
            kind: "Gateway".to_owned(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }

    /// Adds the Gateway's infrastructure labels and annotations to `meta`: the template's labels
    /// win over the infrastructure's, since the selector depends on them.
    fn decorate(&self, meta: &mut ObjectMeta) {
        if !self.labels.is_empty() {
            let mut merged = self.labels.clone();
            merged.extend(meta.labels.take().unwrap_or_default());
            meta.labels = Some(merged);
        }
        if !self.annotations.is_empty() {
            let mut merged = self.annotations.clone();
            merged.extend(meta.annotations.take().unwrap_or_default());
            meta.annotations = Some(merged);
        }
    }
}

/// What is wrong with a template: the file, the document (its kind, or its place in the file),
/// the field (`-` for the whole document) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("waypoint template {file}: {document}: {field}: {detail}")]
pub struct TemplateError {
    /// The template's file ([`TEMPLATE_FILE`] for the built-in one).
    pub file: String,
    /// `ServiceAccount`, `Service`, `Deployment`, or `document N` before its kind is known.
    pub document: String,
    /// The field at fault, as a path (`spec.template.spec.containers[0].image`).
    pub field: String,
    /// What is wrong with it.
    pub detail: String,
}

/// The value a placeholder stands for: text, or a number where the value is only the
/// placeholder (a port must be a YAML number for Kubernetes).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    Text(String),
    Number(u16),
}

/// The values of the [`PLACEHOLDERS`] for one Gateway.
#[derive(Debug, Clone)]
pub struct Vars(BTreeMap<&'static str, Var>);

impl Vars {
    /// What `gw` and `settings` give each placeholder.
    pub fn of(gw: &WaypointGateway, settings: &WaypointSettings) -> Self {
        let text = |s: &str| Var::Text(s.to_owned());
        Vars(BTreeMap::from([
            ("GATEWAY_NAME", text(&gw.name)),
            ("GATEWAY_NAMESPACE", text(&gw.namespace)),
            ("GATEWAY_UID", text(&gw.uid)),
            ("HBONE_PORT", Var::Number(gw.hbone_port)),
            ("IMAGE", text(&settings.image)),
            ("CONTROL_ADDRESS", text(&settings.control_address)),
            ("TRUST_DOMAIN", text(&settings.trust_domain)),
            ("CLUSTER_ID", text(&settings.cluster_id)),
            ("CLUSTER_DOMAIN", text(&settings.domain_suffix)),
        ]))
    }
}

/// A parsed template: one document per kind, placeholders not yet filled.
#[derive(Debug, Clone)]
pub struct Template {
    file: String,
    service_account: Value,
    service: Value,
    deployment: Value,
}

impl Template {
    /// The template built into the binary ([`TEMPLATE_FILE`]), parsed once.
    pub fn builtin() -> Result<&'static Template, TemplateError> {
        static BUILTIN: OnceLock<Result<Template, TemplateError>> = OnceLock::new();
        BUILTIN
            .get_or_init(|| Template::parse(TEMPLATE_FILE, TEMPLATE_TEXT))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Reads `text` (from `file`, for messages): YAML documents, exactly one ServiceAccount, one
    /// Service and one Deployment, placeholders only among the known ones and only in values.
    pub fn parse(file: &str, text: &str) -> Result<Template, TemplateError> {
        let fault = |document: &str, field: &str, detail: String| TemplateError {
            file: file.to_owned(),
            document: document.to_owned(),
            field: field.to_owned(),
            detail,
        };
        let (mut service_account, mut service, mut deployment) = (None, None, None);
        for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let at = format!("document {}", index + 1);
            let value = <Value as serde::Deserialize>::deserialize(document)
                .map_err(|e| fault(&at, "-", format!("not YAML: {e}")))?;
            if value.is_null() {
                // Only comments, or an empty document between two `---`.
                continue;
            }
            let kind = value
                .get("kind")
                .and_then(Value::as_str)
                .ok_or_else(|| fault(&at, "kind", "missing".to_owned()))?;
            let slot = match kind {
                "ServiceAccount" => &mut service_account,
                "Service" => &mut service,
                "Deployment" => &mut deployment,
                other => {
                    return Err(fault(
                        &at,
                        "kind",
                        format!(
                            "{other:?}: a waypoint is made of a ServiceAccount, a Service and a \
                             Deployment only"
                        ),
                    ))
                }
            };
            if slot.is_some() {
                return Err(fault(
                    &at,
                    "kind",
                    format!("a second {kind}: the template has exactly one"),
                ));
            }
            if let Err((field, detail)) = check_placeholders(&value, "") {
                return Err(fault(kind, &field, detail));
            }
            *slot = Some(value);
        }
        let need = |slot: Option<Value>, kind: &str| {
            slot.ok_or_else(|| fault(kind, "-", format!("missing: the template has one {kind}")))
        };
        Ok(Template {
            file: file.to_owned(),
            service_account: need(service_account, "ServiceAccount")?,
            service: need(service, "Service")?,
            deployment: need(deployment, "Deployment")?,
        })
    }

    /// Fills the template for a sample Gateway and proves every object reads as its
    /// k8s-openapi type with nothing lost (a field Kubernetes does not know, such as a
    /// misspelling, would be dropped silently on apply), that the Deployment has the
    /// [`CONTAINER`] and that its selector selects its pods, as the Service's does.
    pub fn check(&self) -> Result<(), TemplateError> {
        let gw = WaypointGateway {
            namespace: "check".to_owned(),
            name: "waypoint".to_owned(),
            uid: "00000000-0000-0000-0000-000000000000".to_owned(),
            generation: None,
            hbone_port: DEFAULT_HBONE_PORT,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        };
        let settings = WaypointSettings {
            image: "registry.example/waypoint:check".to_owned(),
            control_address: super::DEFAULT_CONTROL_ADDRESS.to_owned(),
            trust_domain: "cluster.local".to_owned(),
            cluster_id: "Kubernetes".to_owned(),
            domain_suffix: "cluster.local".to_owned(),
        };
        let vars = Vars::of(&gw, &settings);
        self.read_losslessly::<ServiceAccount>(&self.service_account, "ServiceAccount", &vars)?;
        let service: Service = self.read_losslessly(&self.service, "Service", &vars)?;
        let deployment: Deployment = self.read_losslessly(&self.deployment, "Deployment", &vars)?;
        let fault = |document: &str, field: &str, detail: &str| TemplateError {
            file: self.file.clone(),
            document: document.to_owned(),
            field: field.to_owned(),
            detail: detail.to_owned(),
        };
        let pod = &deployment.spec.template;
        let containers = pod.spec.as_ref().map(|s| s.containers.as_slice());
        if !containers
            .unwrap_or_default()
            .iter()
            .any(|c| c.name == CONTAINER)
        {
            return Err(fault(
                "Deployment",
                "spec.template.spec.containers",
                &format!("no container named {CONTAINER:?} (the one the controller configures)"),
            ));
        }
        let selector = deployment
            .spec
            .selector
            .match_labels
            .clone()
            .unwrap_or_default();
        let pod_labels = pod
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        if selector.is_empty() || selector.iter().any(|(k, v)| pod_labels.get(k) != Some(v)) {
            return Err(fault(
                "Deployment",
                "spec.selector.matchLabels",
                "must be non-empty and select the pod template's labels",
            ));
        }
        if service.spec.and_then(|s| s.selector) != Some(selector) {
            return Err(fault(
                "Service",
                "spec.selector",
                "must be the Deployment's spec.selector.matchLabels",
            ));
        }
        Ok(())
    }

    /// `document` with `vars` filled in, as a `T`.
    fn read<T: DeserializeOwned>(
        &self,
        document: &Value,
        kind: &str,
        vars: &Vars,
    ) -> Result<(T, Value), TemplateError> {
        let fault = |field: String, detail: String| TemplateError {
            file: self.file.clone(),
            document: kind.to_owned(),
            field,
            detail,
        };
        let mut filled = document.clone();
        fill(&mut filled, vars, "").map_err(|(field, detail)| fault(field, detail))?;
        let typed = serde_path_to_error::deserialize(filled.clone())
            .map_err(|e| fault(e.path().to_string(), e.inner().to_string()))?;
        Ok((typed, filled))
    }

    /// [`Self::read`], then proves the `T` says all the document said.
    fn read_losslessly<T: DeserializeOwned + Serialize>(
        &self,
        document: &Value,
        kind: &str,
        vars: &Vars,
    ) -> Result<T, TemplateError> {
        let (typed, filled) = self.read::<T>(document, kind, vars)?;
        let back = serde_json::to_value(&typed).map_err(|e| TemplateError {
            file: self.file.clone(),
            document: kind.to_owned(),
            field: "-".to_owned(),
            detail: format!("cannot be encoded again: {e}"),
        })?;
        if let Some((field, detail)) = first_loss(&filled, &back, "") {
            return Err(TemplateError {
                file: self.file.clone(),
                document: kind.to_owned(),
                field,
                detail,
            });
        }
        Ok(typed)
    }
}

/// `path` followed by the map key `key`.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The placeholder names in `text`, or why its `${` is not one.
fn placeholders_in(text: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{text:?}: a `${{` without its `}}`"))?;
        let name = &after[..end];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "${{{name}}} is not a placeholder (known: {})",
                PLACEHOLDERS.join(", ")
            ));
        }
        names.push(name);
        rest = &after[end + 1..];
    }
    Ok(names)
}

/// The first placeholder fault in `value` (at `path`): an unknown name, or one in a key.
fn check_placeholders(value: &Value, path: &str) -> Result<(), (String, String)> {
    match value {
        Value::String(s) => placeholders_in(s)
            .map(drop)
            .map_err(|detail| (path.to_owned(), detail)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| check_placeholders(item, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().try_for_each(|(key, item)| {
            let at = join(path, key);
            if key.contains("${") {
                return Err((at, "placeholders go in values, not in keys".to_owned()));
            }
            check_placeholders(item, &at)
        }),
        _ => Ok(()),
    }
}

/// Replaces the placeholders in `value` (at `path`) by their values.
fn fill(value: &mut Value, vars: &Vars, path: &str) -> Result<(), (String, String)> {
    match value {
        Value::String(s) => {
            let names = placeholders_in(s).map_err(|detail| (path.to_owned(), detail))?;
            let lookup = |name: &str| {
                vars.0
                    .get(name)
                    .ok_or_else(|| (path.to_owned(), format!("no value for ${{{name}}}")))
            };
            if let [name] = names.as_slice() {
                if s.as_str() == format!("${{{name}}}") {
                    *value = match lookup(name)? {
                        Var::Text(text) => Value::String(text.clone()),
                        Var::Number(n) => Value::from(*n),
                    };
                    return Ok(());
                }
            }
            let mut text = s.clone();
            for name in names {
                let with = match lookup(name)? {
                    Var::Text(t) => t.clone(),
                    Var::Number(n) => n.to_string(),
                };
                text = text.replace(&format!("${{{name}}}"), &with);
            }
            *s = text;
            Ok(())
        }
        Value::Array(items) => items
            .iter_mut()
            .enumerate()
            .try_for_each(|(i, item)| fill(item, vars, &format!("{path}[{i}]"))),
        Value::Object(map) => map
            .iter_mut()
            .try_for_each(|(key, item)| fill(item, vars, &join(path, key))),
        _ => Ok(()),
    }
}

/// Where `read` (a document read into its type and encoded again) lost or changed what
/// `written` said: the path and what happened.
fn first_loss(written: &Value, read: &Value, path: &str) -> Option<(String, String)> {
    match (written, read) {
        (Value::Object(w), Value::Object(r)) => w.iter().find_map(|(key, value)| {
            let at = join(path, key);
            match r.get(key) {
                None if !value.is_null() => Some((
                    at,
                    "not a field Kubernetes knows here (misspelt, or misplaced?)".to_owned(),
                )),
                None => None,
                Some(back) => first_loss(value, back, &at),
            }
        }),
        (Value::Array(w), Value::Array(r)) if w.len() == r.len() => w
            .iter()
            .zip(r)
            .enumerate()
            .find_map(|(i, (w, r))| first_loss(w, r, &format!("{path}[{i}]"))),
        _ if written == read => None,
        _ => Some((
            path.to_owned(),
            format!("{written} reads as {read} (check the field's type)"),
        )),
    }
}

/// The waypoint's ServiceAccount: its identity, `spiffe://<td>/ns/<namespace>/sa/<name>`.
pub fn service_account(
    gw: &WaypointGateway,
    settings: &WaypointSettings,
) -> Result<ServiceAccount, TemplateError> {
    let template = Template::builtin()?;
    let (mut account, _): (ServiceAccount, _) = template.read(
        &template.service_account,
        "ServiceAccount",
        &Vars::of(gw, settings),
    )?;
    gw.decorate(&mut account.metadata);
    Ok(account)
}

/// The waypoint's Service.
pub fn service(
    gw: &WaypointGateway,
    settings: &WaypointSettings,
) -> Result<Service, TemplateError> {
    let template = Template::builtin()?;
    let (mut service, _): (Service, _) =
        template.read(&template.service, "Service", &Vars::of(gw, settings))?;
    gw.decorate(&mut service.metadata);
    Ok(service)
}

/// The waypoint's Deployment, its pods labelled and annotated like the other objects, and
/// `AMESH_HBONE_ADDR` set when the Gateway's HBONE port is not the binary's default.
pub fn deployment(
    gw: &WaypointGateway,
    settings: &WaypointSettings,
) -> Result<Deployment, TemplateError> {
    let template = Template::builtin()?;
    let (mut deployment, _): (Deployment, _) =
        template.read(&template.deployment, "Deployment", &Vars::of(gw, settings))?;
    gw.decorate(&mut deployment.metadata);
    let pod = &mut deployment.spec.template;
    gw.decorate(pod.metadata.get_or_insert_with(ObjectMeta::default));
    if gw.hbone_port != DEFAULT_HBONE_PORT {
        let container = pod
            .spec
            .iter_mut()
            .flat_map(|s| s.containers.iter_mut())
            .find(|c| c.name == CONTAINER)
            .ok_or_else(|| TemplateError {
                file: template.file.clone(),
                document: "Deployment".to_owned(),
                field: "spec.template.spec.containers".to_owned(),
                detail: format!("no container named {CONTAINER:?}"),
            })?;
        container.env.get_or_insert_with(Vec::new).push(EnvVar {
            name: "AMESH_HBONE_ADDR".to_owned(),
            value: Some(format!("0.0.0.0:{}", gw.hbone_port)),
            value_from: None,
        });
    }
    Ok(deployment)
}

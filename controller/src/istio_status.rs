//! What amesh did with each VirtualService and DestinationRule, written on the object's
//! `status` on the Kubernetes API, so `kubectl get virtualservice -o yaml` shows the fields amesh
//! ignored without reading the controller's log.
//!
//! Istio's own status of these kinds is an `IstioStatus`: `conditions` and analyzer
//! `validationMessages` (codes `IST0xxx`). amesh has no analyzer codes for "not implemented by
//! this dataplane", so it writes one condition: `Accepted`, status `True` (the object is applied,
//! less what the message lists), reason `Accepted` when nothing was ignored, else
//! `UnsupportedValue` with the translation's warnings about the object (one per line). The
//! condition's `lastTransitionTime` moves only when its status or reason does; the status is
//! applied (server-side, field manager `amesh-controller`, on `/status`) only when it changed,
//! and a reporter remembers what it wrote, so a steady cluster costs no requests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::manifests::{Manifests, ObjectKey};
use crate::source::kube::Kind;
use crate::translate::{translate, TranslateOptions};

/// Field manager of the status applies (the deployer's too).
const FIELD_MANAGER: &str = "amesh-controller";

/// Snapshots arriving closer together than this are reported once (translation is the
/// costly part; statuses need not be instant).
const SETTLE: Duration = Duration::from_secs(2);

/// The kinds whose status amesh reports.
const KINDS: [(Kind, &str); 2] = [
    (Kind::VirtualService, "VirtualService"),
    (Kind::DestinationRule, "DestinationRule"),
];

/// The warnings about each VirtualService and DestinationRule, by kind and key: those the
/// translation writes as `<Kind> <ns>/<name>: ...` or `<Kind> <ns>/<name> (rule N): ...`, and
/// the precedence warning naming VirtualServices that were not applied.
pub fn problems(warnings: &[String]) -> BTreeMap<(Kind, ObjectKey), Vec<String>> {
    let mut out: BTreeMap<(Kind, ObjectKey), Vec<String>> = BTreeMap::new();
    for w in warnings {
        for (kind, name) in KINDS {
            let Some(rest) = w.strip_prefix(name).and_then(|r| r.strip_prefix(' ')) else {
                continue;
            };
            let end = rest.find([':', ' ']).unwrap_or(rest.len());
            if let Some((ns, n)) = rest[..end].split_once('/') {
                out.entry((kind, ObjectKey::new(ns, n)))
                    .or_default()
                    .push(w.clone());
            }
        }
        // "service <key>: VirtualService a/b, c/d not applied: ..."
        if let Some((_, after)) = w.split_once(": VirtualService ") {
            if let Some((list, _)) = after.split_once(" not applied") {
                for key in list.split(", ") {
                    if let Some((ns, n)) = key.split_once('/') {
                        out.entry((Kind::VirtualService, ObjectKey::new(ns, n)))
                            .or_default()
                            .push(w.clone());
                    }
                }
            }
        }
    }
    out
}

/// The `status` to write for an object with these problems, given its current `status` and
/// `generation`; `None` when the current status already says it.
pub fn next_status(
    current: &Value,
    generation: Option<i64>,
    problems: &[String],
    now: Timestamp,
) -> Option<Value> {
    let (reason, message) = if problems.is_empty() {
        ("Accepted", "applied by amesh waypoints".to_owned())
    } else {
        ("UnsupportedValue", problems.join("\n"))
    };
    let current_condition = current["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Accepted");
    let same = current_condition.is_some_and(|c| {
        c["status"] == "True"
            && c["reason"] == reason
            && c["message"] == message.as_str()
            && c["observedGeneration"].as_i64() == generation
    });
    if same {
        return None;
    }
    let since = current_condition
        .filter(|c| c["status"] == "True" && c["reason"] == reason)
        .and_then(|c| c["lastTransitionTime"].as_str())
        .and_then(|t| t.parse::<Timestamp>().ok())
        .unwrap_or(now);
    let condition = Condition {
        type_: "Accepted".to_owned(),
        status: "True".to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: Time(since),
    };
    Some(json!({"conditions": [condition]}))
}

/// Writes the status of one object when it differs; `Ok(false)` when it did not (or the object
/// is gone).
pub async fn write(
    client: &Client,
    kind: Kind,
    key: &ObjectKey,
    problems: &[String],
) -> Result<bool, kube::Error> {
    let resource = kind.api_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &key.namespace, &resource);
    let Some(served) = api.get_opt(&key.name).await? else {
        return Ok(false);
    };
    let Some(status) = next_status(
        &served.data["status"],
        served.metadata.generation,
        problems,
        Timestamp::now(),
    ) else {
        return Ok(false);
    };
    let body = json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {"name": key.name, "namespace": key.namespace},
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&key.name, &params, &Patch::Apply(&body))
        .await?;
    Ok(true)
}

/// What a reporter last wrote (or found) per object: its generation and problems.
type Written = BTreeMap<(Kind, ObjectKey), (Option<i64>, Vec<String>)>;

/// Follows the source's snapshots and keeps the status of every VirtualService and
/// DestinationRule up to date.
pub struct StatusReporter {
    client: Client,
    opts: TranslateOptions,
}

impl StatusReporter {
    /// A reporter writing through `client`, translating with `opts` as the xDS server does.
    pub fn new(client: Client, opts: TranslateOptions) -> Self {
        Self { client, opts }
    }

    /// Runs until the snapshot watch closes.
    pub fn spawn(self, mut manifests: watch::Receiver<Arc<Manifests>>) -> JoinHandle<()> {
        tokio::spawn(async move {
            // What was last written (or found), per object: written again only on a change.
            let mut written = Written::new();
            loop {
                let snapshot = manifests.borrow_and_update().clone();
                self.report(&snapshot, &mut written).await;
                if manifests.changed().await.is_err() {
                    return;
                }
                tokio::time::sleep(SETTLE).await;
            }
        })
    }

    async fn report(&self, snapshot: &Manifests, written: &mut Written) {
        let translated = translate(snapshot, &self.opts);
        let mut problems = problems(&translated.warnings);
        let objects = snapshot
            .virtual_services
            .iter()
            .map(|(k, v)| ((Kind::VirtualService, k.clone()), v.metadata.generation))
            .chain(
                snapshot
                    .destination_rules
                    .iter()
                    .map(|(k, d)| ((Kind::DestinationRule, k.clone()), d.metadata.generation)),
            );
        let mut seen = BTreeMap::new();
        for (id, generation) in objects {
            let list = problems.remove(&id).unwrap_or_default();
            let state = (generation, list);
            if written.get(&id) != Some(&state) {
                match write(&self.client, id.0, &id.1, &state.1).await {
                    Ok(changed) => debug!(kind = %id.0, object = %id.1, changed, "status"),
                    Err(e) => {
                        warn!(
                            kind = %id.0,
                            object = %id.1,
                            "cannot write the status: {e} (the controller needs `patch` on \
                             virtualservices/status and destinationrules/status)"
                        );
                        continue;
                    }
                }
            }
            seen.insert(id, state);
        }
        *written = seen;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_by_object() {
        let warnings = vec![
            "VirtualService ns/a: spec.http[0].corsPolicy: not supported".to_owned(),
            "VirtualService ns/a (rule 1): subset \"x\" of ns/h is not defined".to_owned(),
            "DestinationRule ns/d: spec.trafficPolicy.tls: not supported".to_owned(),
            "service ns/s: VirtualService ns/b, ns/c not applied: the service has".to_owned(),
            "HTTPRoute ns/r spec.rules[0]: something".to_owned(),
        ];
        let p = problems(&warnings);
        let keys: Vec<(Kind, String)> = p.keys().map(|(k, o)| (*k, o.to_string())).collect();
        assert_eq!(
            keys,
            [
                (Kind::VirtualService, "ns/a".to_owned()),
                (Kind::VirtualService, "ns/b".to_owned()),
                (Kind::VirtualService, "ns/c".to_owned()),
                (Kind::DestinationRule, "ns/d".to_owned()),
            ]
        );
        assert_eq!(
            p[&(Kind::VirtualService, ObjectKey::new("ns", "a"))].len(),
            2
        );
    }

    #[test]
    fn condition_changes_only_with_the_problems() {
        let t0: Timestamp = "2024-05-01T10:00:00Z".parse().unwrap();
        let t1: Timestamp = "2024-05-01T10:05:00Z".parse().unwrap();
        let clean = next_status(&Value::Null, Some(1), &[], t0).unwrap();
        assert_eq!(clean["conditions"][0]["reason"], "Accepted");
        assert_eq!(next_status(&clean, Some(1), &[], t1), None);
        let bad = vec!["VirtualService ns/a: spec.tcp: not supported".to_owned()];
        let with = next_status(&clean, Some(1), &bad, t1).unwrap();
        let c = &with["conditions"][0];
        assert_eq!(
            (&c["status"], &c["reason"], &c["lastTransitionTime"]),
            (
                &json!("True"),
                &json!("UnsupportedValue"),
                &json!("2024-05-01T10:05:00Z")
            )
        );
        assert_eq!(c["message"], bad[0].as_str());
        assert!(
            next_status(&with, Some(2), &bad, t1).is_some(),
            "new generation"
        );
    }
}

//! The Gateway's `status` as the deployer reports it: `addresses` (the waypoint Service's
//! ClusterIPs, else its hostname) and the conditions `Accepted` and `Programmed`. A condition's
//! `lastTransitionTime` changes only when its `status` does, so an unchanged waypoint yields an
//! unchanged status and the reconciler writes nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use super::objects::GATEWAY_API_VERSION;

/// One condition the deployer sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    /// `True` or `False`.
    pub ok: bool,
    /// CamelCase reason (`Accepted`, `Programmed`, `Pending`, `Invalid`, `ResourceConflict`).
    pub reason: &'static str,
    /// What a person reading `kubectl describe gateway` needs to know.
    pub message: String,
}

impl Cond {
    /// A `True` condition.
    pub fn yes(reason: &'static str, message: impl Into<String>) -> Self {
        Cond {
            ok: true,
            reason,
            message: message.into(),
        }
    }

    /// A `False` condition.
    pub fn no(reason: &'static str, message: impl Into<String>) -> Self {
        Cond {
            ok: false,
            reason,
            message: message.into(),
        }
    }

    fn status(&self) -> &'static str {
        if self.ok {
            "True"
        } else {
            "False"
        }
    }
}

/// What the deployer reports on one Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `status.addresses`, as `(type, value)`.
    pub addresses: Vec<(&'static str, String)>,
    /// The `Accepted` condition.
    pub accepted: Cond,
    /// The `Programmed` condition.
    pub programmed: Cond,
}

/// The `status` to write for `report`, given the Gateway's current `status` (to keep transition
/// times) and `generation`; `None` when the current status already says all of it.
pub fn next_status(
    current: &Value,
    generation: Option<i64>,
    report: &Report,
    now: Timestamp,
) -> Option<Value> {
    let addresses: Vec<Value> = report
        .addresses
        .iter()
        .map(|(type_, value)| json!({"type": type_, "value": value}))
        .collect();
    let conditions = [
        ("Accepted", &report.accepted),
        ("Programmed", &report.programmed),
    ];
    let current_conditions = current["conditions"].as_array();
    let find = |type_: &str| {
        current_conditions
            .into_iter()
            .flatten()
            .find(|c| c["type"] == type_)
    };
    let unchanged = current["addresses"].as_array() == Some(&addresses)
        && conditions.iter().all(|(type_, cond)| {
            find(type_).is_some_and(|c| {
                c["status"] == cond.status()
                    && c["reason"] == cond.reason
                    && c["message"] == cond.message.as_str()
                    && c["observedGeneration"].as_i64() == generation
            })
        });
    if unchanged {
        return None;
    }
    let conditions: Vec<Condition> = conditions
        .iter()
        .map(|(type_, cond)| {
            // Kept from the current condition when its status holds: the time says since when
            // the Gateway has been (not) programmed, not when the controller last looked.
            let since = find(type_)
                .filter(|c| c["status"] == cond.status())
                .and_then(|c| c["lastTransitionTime"].as_str())
                .and_then(|t| t.parse::<Timestamp>().ok())
                .unwrap_or(now);
            Condition {
                type_: (*type_).to_owned(),
                status: cond.status().to_owned(),
                reason: cond.reason.to_owned(),
                message: cond.message.clone(),
                observed_generation: generation,
                last_transition_time: Time(since),
            }
        })
        .collect();
    Some(json!({"addresses": addresses, "conditions": conditions}))
}

/// The addresses `current` (a Gateway's `status`) holds, for a report that has no new ones.
pub fn current_addresses(current: &Value) -> Vec<(&'static str, String)> {
    current["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let type_ = match a["type"].as_str() {
                Some("Hostname") => "Hostname",
                Some("IPAddress") | None => "IPAddress",
                // A type amesh does not write: not its to keep.
                Some(_) => return None,
            };
            Some((type_, a["value"].as_str()?.to_owned()))
        })
        .collect()
}

/// The server-side apply body of the Gateway's `status` subresource.
pub fn status_patch(namespace: &str, name: &str, status: Value) -> Value {
    json!({
        "apiVersion": GATEWAY_API_VERSION,
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace},
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(programmed: bool) -> Report {
        Report {
            addresses: vec![("IPAddress", "10.96.0.20".to_owned())],
            accepted: Cond::yes("Accepted", "ok"),
            programmed: if programmed {
                Cond::yes("Programmed", "up")
            } else {
                Cond::no("Pending", "waiting")
            },
        }
    }

    #[test]
    fn transition_times_move_only_with_the_status() {
        let t0: Timestamp = "2024-05-01T10:00:00Z".parse().unwrap();
        let t1: Timestamp = "2024-05-01T10:05:00Z".parse().unwrap();
        let first = next_status(&Value::Null, Some(2), &report(false), t0).unwrap();
        assert_eq!(
            first["conditions"][1]["lastTransitionTime"],
            "2024-05-01T10:00:00Z"
        );
        assert_eq!(first["conditions"][1]["observedGeneration"], 2);
        assert_eq!(next_status(&first, Some(2), &report(false), t1), None);
        let second = next_status(&first, Some(2), &report(true), t1).unwrap();
        assert_eq!(
            second["conditions"][0]["lastTransitionTime"],
            "2024-05-01T10:00:00Z"
        );
        assert_eq!(
            second["conditions"][1]["lastTransitionTime"],
            "2024-05-01T10:05:00Z"
        );
        assert!(
            next_status(&second, Some(3), &report(true), t1).is_some(),
            "a new generation"
        );
    }
}

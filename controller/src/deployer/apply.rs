//! Writing one object the Gateway owns: read it; if someone else's object has its name, leave it
//! alone; if it already holds everything desired, write nothing; otherwise server-side apply the
//! desired fields (forcing: the controller owns these fields of its objects).
//!
//! "Holds everything desired" is [`covers`]: the API server adds defaults (`protocol: TCP`,
//! `terminationMessagePath`, a ClusterIP) and other writers add fields (an autoscaler's
//! `replicas`, annotations), none of which is a reason to write; a desired field that is
//! missing or different is.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{DeployError, FIELD_MANAGER};

/// What [`ensure`] found and did.
#[derive(Debug, Clone)]
pub enum Ensured<K> {
    /// The object did not exist: created (by the apply), as returned by the API server.
    Created(K),
    /// It differed: applied, as returned.
    Updated(K),
    /// It already held every desired field: nothing written.
    Unchanged(K),
    /// An object of that name exists that the Gateway does not control: left as it is.
    Foreign(K),
}

impl<K> Ensured<K> {
    /// The object as it now is on the API server.
    pub fn object(&self) -> &K {
        match self {
            Ensured::Created(k)
            | Ensured::Updated(k)
            | Ensured::Unchanged(k)
            | Ensured::Foreign(k) => k,
        }
    }

    /// Whether a write happened.
    pub fn wrote(&self) -> bool {
        matches!(self, Ensured::Created(_) | Ensured::Updated(_))
    }
}

/// Makes the object named like `desired` hold `desired`'s fields, unless it exists without a
/// controller owner reference to the Gateway of uid `owner_uid`.
pub async fn ensure<K>(
    api: &Api<K>,
    desired: &K,
    owner_uid: &str,
) -> Result<Ensured<K>, DeployError>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    let name = desired.name_any();
    let namespace = desired.namespace().unwrap_or_default();
    let kind = K::kind(&()).into_owned();
    let current = api
        .get_opt(&name)
        .await
        .map_err(|source| DeployError::Read {
            kind: kind.clone(),
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        })?;
    if let Some(current) = current {
        if !controlled_by(&current, owner_uid) {
            return Ok(Ensured::Foreign(current));
        }
        let want = serde_json::to_value(desired).map_err(|e| DeployError::Encode {
            kind: kind.clone(),
            detail: e.to_string(),
        })?;
        let have = serde_json::to_value(&current).map_err(|e| DeployError::Encode {
            kind: kind.clone(),
            detail: e.to_string(),
        })?;
        if covers(&have, &want) {
            return Ok(Ensured::Unchanged(current));
        }
        return apply(api, desired, &kind, &namespace, &name)
            .await
            .map(Ensured::Updated);
    }
    apply(api, desired, &kind, &namespace, &name)
        .await
        .map(Ensured::Created)
}

async fn apply<K>(
    api: &Api<K>,
    desired: &K,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<K, DeployError>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(name, &params, &Patch::Apply(desired))
        .await
        .map_err(|source| DeployError::Write {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })
}

/// Whether `object` has a controller owner reference to the object of uid `owner_uid`.
pub fn controlled_by(object: &impl Resource, owner_uid: &str) -> bool {
    object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == owner_uid && r.controller == Some(true))
}

/// Whether `have` holds every field of `want` with the same value: objects field by field
/// (extra fields in `have` are fine), lists element by element (same length: an extra port
/// or env var is a difference), anything else equal. A `null` in `want` asks for nothing.
pub fn covers(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (_, Value::Null) => true,
        (Value::Object(have), Value::Object(want)) => want
            .iter()
            .all(|(key, w)| w.is_null() || have.get(key).is_some_and(|h| covers(h, w))),
        (Value::Array(have), Value::Array(want)) => {
            have.len() == want.len() && have.iter().zip(want).all(|(h, w)| covers(h, w))
        }
        _ => have == want,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::covers;

    #[test]
    fn defaults_and_extra_fields_are_covered_differences_are_not() {
        let want =
            json!({"spec": {"ports": [{"port": 15008, "protocol": "TCP"}], "type": "ClusterIP"}});
        let have = json!({"spec": {
            "ports": [{"port": 15008, "protocol": "TCP", "targetPort": 15008}],
            "type": "ClusterIP", "clusterIP": "10.96.0.20"
        }});
        assert!(covers(&have, &want));
        let other_port =
            json!({"spec": {"ports": [{"port": 15009, "protocol": "TCP"}], "type": "ClusterIP"}});
        assert!(!covers(&have, &other_port));
        let two_ports = json!({"spec": {"ports": [{"port": 15008}, {"port": 15021}]}});
        assert!(!covers(&have, &two_ports), "a missing list element");
        assert!(!covers(&json!({"spec": {}}), &want), "a missing field");
        assert!(
            covers(&have, &json!({"status": null})),
            "null asks for nothing"
        );
    }
}

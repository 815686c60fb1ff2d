//! Namespaced objects of the fake API server, with the API server's semantics: `GET`, `POST`
//! (create) and `PUT` (replace) of Secrets and ConfigMaps at
//! `/api/v1/namespaces/<ns>/{secrets,configmaps}[/<name>]`; `GET` and server-side apply
//! (`PATCH`, `application/apply-patch+yaml`) of ServiceAccounts, Services, Deployments,
//! Gateways, VirtualServices and DestinationRules, and apply of their `/status`; `404
//! NotFound`, `409 AlreadyExists` and `409 Conflict` (a stale `resourceVersion`) as `Status`
//! bodies; a new `resourceVersion` on every write that changes the object (an apply that
//! changes nothing keeps it, as the API server does), and a ClusterIP for a new Service. Every request is recorded with its body, so tests
//! can say what was (not) written; a test can also have another writer win a race
//! ([`Objects::insert_before_create`]).
//!
//! The apply is a single-manager approximation of server-side apply: the body's fields are
//! merged into the object (maps field by field, lists replaced whole); `status` is written only
//! through `/status`, and only `status` is.

use std::collections::HashMap;

use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::{json_response, Body};

/// Resources served: URL prefix, plural, kind, apiVersion.
const RESOURCES: [(&str, &str, &str, &str); 8] = [
    ("/api/v1", "secrets", "Secret", "v1"),
    ("/api/v1", "configmaps", "ConfigMap", "v1"),
    ("/api/v1", "serviceaccounts", "ServiceAccount", "v1"),
    ("/api/v1", "services", "Service", "v1"),
    ("/apis/apps/v1", "deployments", "Deployment", "apps/v1"),
    (
        "/apis/gateway.networking.k8s.io/v1",
        "gateways",
        "Gateway",
        "gateway.networking.k8s.io/v1",
    ),
    (
        "/apis/networking.istio.io/v1",
        "virtualservices",
        "VirtualService",
        "networking.istio.io/v1",
    ),
    (
        "/apis/networking.istio.io/v1",
        "destinationrules",
        "DestinationRule",
        "networking.istio.io/v1",
    ),
];

/// The content type of a server-side apply.
pub const APPLY: &str = "application/apply-patch+yaml";

/// (plural, namespace, name).
type Key = (String, String, String);

/// One request to an object path.
pub struct Route {
    method: Method,
    plural: &'static str,
    kind: &'static str,
    api_version: &'static str,
    namespace: String,
    /// `None` for the collection (`POST`).
    name: Option<String>,
    /// The `/status` subresource.
    status: bool,
}

impl Route {
    /// The route of `path`, if it is one of ours.
    pub fn parse(method: &Method, path: &str) -> Option<Route> {
        RESOURCES
            .into_iter()
            .find_map(|(prefix, plural, kind, api_version)| {
                let rest = path.strip_prefix(prefix)?.strip_prefix("/namespaces/")?;
                let mut parts = rest.split('/');
                let namespace = parts.next().filter(|s| !s.is_empty())?;
                if parts.next()? != plural {
                    return None;
                }
                let name = parts.next().map(str::to_owned);
                let status = match parts.next() {
                    None => false,
                    Some("status") if parts.next().is_none() => true,
                    Some(_) => return None,
                };
                if name.as_deref() == Some("") {
                    return None;
                }
                Some(Route {
                    method: method.clone(),
                    plural,
                    kind,
                    api_version,
                    namespace: namespace.to_owned(),
                    name,
                    status,
                })
            })
    }
}

/// One request as the server got it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`, `PUT`, `PATCH`.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string (`fieldManager=...&force=true`), empty if none.
    pub query: String,
    /// The `Content-Type` header, empty if none.
    pub content_type: String,
    /// The JSON body (`null` if none).
    pub body: Value,
}

#[derive(Default)]
struct State {
    objects: HashMap<Key, Value>,
    version: u64,
    /// `"<METHOD> <path>"` of every request, in order.
    requests: Vec<String>,
    /// Every request in full, in order.
    recorded: Vec<Recorded>,
    /// Put in place just before the next create of the same key is handled.
    before_create: HashMap<Key, Value>,
}

/// The server's Secrets and ConfigMaps.
#[derive(Default)]
pub struct Objects(Mutex<State>);

fn key(plural: &str, namespace: &str, name: &str) -> Key {
    (plural.to_owned(), namespace.to_owned(), name.to_owned())
}

impl Objects {
    /// Stores `object` as `kubectl apply` would have (not recorded as a request).
    pub fn insert(&self, plural: &str, namespace: &str, name: &str, object: Value) {
        let mut state = self.0.lock();
        let (_, _, kind, api_version) = *RESOURCES.iter().find(|r| r.1 == plural).unwrap();
        let stored = stamp(&mut state, object, (kind, api_version), namespace, name);
        state.objects.insert(key(plural, namespace, name), stored);
    }

    /// Deletes the object, as `kubectl delete` would (not recorded as a request).
    pub fn remove(&self, plural: &str, namespace: &str, name: &str) {
        self.0.lock().objects.remove(&key(plural, namespace, name));
    }

    /// The stored object, if any.
    pub fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        self.0
            .lock()
            .objects
            .get(&key(plural, namespace, name))
            .cloned()
    }

    /// Has `object` appear when the next create of it arrives, before the create is handled:
    /// another writer that read "not found" at the same time and wrote first.
    pub fn insert_before_create(&self, plural: &str, namespace: &str, name: &str, object: Value) {
        self.0
            .lock()
            .before_create
            .insert(key(plural, namespace, name), object);
    }

    /// Every request so far, as `"<METHOD> <path>"`.
    pub fn requests(&self) -> Vec<String> {
        self.0.lock().requests.clone()
    }

    /// Every request so far in full: method, path, query, content type and body.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.0.lock().recorded.clone()
    }

    /// The requests that tried to write (`POST`, `PUT`, `PATCH`).
    pub fn writes(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.starts_with("POST ") || r.starts_with("PUT ") || r.starts_with("PATCH "))
            .collect()
    }

    /// Changes the stored object with `edit` (bumping its resourceVersion), as another writer
    /// would (not recorded as a request): a Deployment's status, a Service's ClusterIP.
    pub fn modify(&self, plural: &str, namespace: &str, name: &str, edit: impl FnOnce(&mut Value)) {
        let mut state = self.0.lock();
        let key = key(plural, namespace, name);
        let mut object = state
            .objects
            .get(&key)
            .cloned()
            .expect("the object is stored");
        edit(&mut object);
        let (_, _, kind, api_version) = *RESOURCES.iter().find(|r| r.1 == plural).unwrap();
        let stored = stamp(&mut state, object, (kind, api_version), namespace, name);
        state.objects.insert(key, stored);
    }

    /// Answers one request; `query` and `content_type` are recorded, and say what a `PATCH` is.
    pub fn handle(
        &self,
        route: Route,
        path: &str,
        query: &str,
        content_type: &str,
        body: &Bytes,
    ) -> Response<Body> {
        let mut state = self.0.lock();
        state.requests.push(format!("{} {path}", route.method));
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        state.recorded.push(Recorded {
            method: route.method.to_string(),
            path: path.to_owned(),
            query: query.to_owned(),
            content_type: content_type.to_owned(),
            body: body.clone(),
        });
        let typ = (route.kind, route.api_version);
        match (&route.method, &route.name) {
            (&Method::GET, Some(name)) => {
                match state
                    .objects
                    .get(&key(route.plural, &route.namespace, name))
                {
                    Some(object) => json_response(StatusCode::OK, object),
                    None => not_found(&route, name),
                }
            }
            (&Method::POST, None) => {
                let Some(name) = body["metadata"]["name"].as_str().map(str::to_owned) else {
                    return status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        "name: Required value",
                        &route,
                        "",
                    );
                };
                let key = key(route.plural, &route.namespace, &name);
                if let Some(winner) = state.before_create.remove(&key) {
                    let stored = stamp(&mut state, winner, typ, &route.namespace, &name);
                    state.objects.insert(key.clone(), stored);
                }
                if state.objects.contains_key(&key) {
                    let message = format!("{} {name:?} already exists", route.plural);
                    return status(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        &message,
                        &route,
                        &name,
                    );
                }
                let stored = stamp(&mut state, body, typ, &route.namespace, &name);
                state.objects.insert(key, stored.clone());
                json_response(StatusCode::CREATED, &stored)
            }
            (&Method::PUT, Some(name)) => {
                let key = key(route.plural, &route.namespace, name);
                let Some(current) = state.objects.get(&key) else {
                    return not_found(&route, name);
                };
                let sent = body["metadata"]["resourceVersion"].as_str().unwrap_or("");
                if !sent.is_empty() && current["metadata"]["resourceVersion"] != sent {
                    let message = format!(
                        "Operation cannot be fulfilled on {} {name:?}: the object has been \
                         modified; please apply your changes to the latest version and try again",
                        route.plural
                    );
                    return status(StatusCode::CONFLICT, "Conflict", &message, &route, name);
                }
                let stored = stamp(&mut state, body, typ, &route.namespace, name);
                state.objects.insert(key, stored.clone());
                json_response(StatusCode::OK, &stored)
            }
            (&Method::PATCH, Some(name)) => {
                if content_type != APPLY {
                    return status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        &format!("the fake serves server-side apply only, not {content_type:?}"),
                        &route,
                        name,
                    );
                }
                if !query.split('&').any(|p| p.starts_with("fieldManager=")) {
                    return status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        "fieldManager: Required value: is required for apply patch",
                        &route,
                        name,
                    );
                }
                let key = key(route.plural, &route.namespace, name);
                let current = state.objects.get(&key).cloned();
                let next = match (current.clone(), route.status) {
                    (None, true) => return not_found(&route, name),
                    (None, false) => {
                        let mut created = body;
                        created.as_object_mut().map(|o| o.remove("status"));
                        if route.kind == "Service" && created["spec"]["clusterIP"].is_null() {
                            let ip = format!("10.96.0.{}", 10 + state.version);
                            created["spec"]["clusterIP"] = ip.clone().into();
                            created["spec"]["clusterIPs"] = json!([ip]);
                        }
                        let stored = stamp(&mut state, created, typ, &route.namespace, name);
                        state.objects.insert(key, stored.clone());
                        return json_response(StatusCode::CREATED, &stored);
                    }
                    (Some(mut next), true) => {
                        merge(&mut next["status"], &body["status"]);
                        next
                    }
                    (Some(mut next), false) => {
                        let mut patch = body;
                        patch.as_object_mut().map(|o| o.remove("status"));
                        merge(&mut next, &patch);
                        next
                    }
                };
                if Some(&next) == current.as_ref() {
                    return json_response(StatusCode::OK, &next);
                }
                let stored = stamp(&mut state, next, typ, &route.namespace, name);
                state.objects.insert(key, stored.clone());
                json_response(StatusCode::OK, &stored)
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
                &route,
                "",
            ),
        }
    }
}

/// `patch` merged into `target`: maps field by field (`null` removes), anything else replaced.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

/// `object` as the API server stores it: kind, name, namespace, a fresh resourceVersion.
fn stamp(
    state: &mut State,
    mut object: Value,
    (kind, api_version): (&str, &str),
    namespace: &str,
    name: &str,
) -> Value {
    state.version += 1;
    object["apiVersion"] = api_version.into();
    object["kind"] = kind.into();
    let metadata = &mut object["metadata"];
    metadata["name"] = name.into();
    metadata["namespace"] = namespace.into();
    metadata["resourceVersion"] = (100 + state.version).to_string().into();
    if metadata["uid"].is_null() {
        metadata["uid"] = format!("uid-{kind}-{namespace}-{name}").into();
    }
    object
}

fn not_found(route: &Route, name: &str) -> Response<Body> {
    let message = format!("{} {name:?} not found", route.plural);
    status(StatusCode::NOT_FOUND, "NotFound", &message, route, name)
}

fn status(
    code: StatusCode,
    reason: &str,
    message: &str,
    route: &Route,
    name: &str,
) -> Response<Body> {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason,
        "details": {"name": name, "kind": route.plural}, "code": code.as_u16()
    });
    json_response(code, &status)
}

//! Namespaced Secrets and ConfigMaps of the fake API server, with the API server's semantics:
//! `GET`, `POST` (create) and `PUT` (replace) of
//! `/api/v1/namespaces/<ns>/{secrets,configmaps}[/<name>]`; `404 NotFound`, `409
//! AlreadyExists` and `409 Conflict` (a stale `resourceVersion`) as `Status` bodies; a new
//! `resourceVersion` on every write. Every request is recorded, so tests can say what was (not)
//! written; a test can also have another writer win a race ([`Objects::insert_before_create`]).

use std::collections::HashMap;

use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::{json_response, Body};

/// Resources served, by their URL plural, with their kind.
const RESOURCES: [(&str, &str); 2] = [("secrets", "Secret"), ("configmaps", "ConfigMap")];

/// (plural, namespace, name).
type Key = (String, String, String);

/// One request to an object path.
pub struct Route {
    method: Method,
    plural: &'static str,
    kind: &'static str,
    namespace: String,
    /// `None` for the collection (`POST`).
    name: Option<String>,
}

impl Route {
    /// The route of `path`, if it is one of ours.
    pub fn parse(method: &Method, path: &str) -> Option<Route> {
        let rest = path.strip_prefix("/api/v1/namespaces/")?;
        let mut parts = rest.split('/');
        let namespace = parts.next().filter(|s| !s.is_empty())?;
        let plural = parts.next()?;
        let name = parts.next().map(str::to_owned);
        if parts.next().is_some() || name.as_deref() == Some("") {
            return None;
        }
        let (plural, kind) = RESOURCES.into_iter().find(|(p, _)| *p == plural)?;
        Some(Route {
            method: method.clone(),
            plural,
            kind,
            namespace: namespace.to_owned(),
            name,
        })
    }
}

#[derive(Default)]
struct State {
    objects: HashMap<Key, Value>,
    version: u64,
    /// `"<METHOD> <path>"` of every request, in order.
    requests: Vec<String>,
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
        let kind = RESOURCES.iter().find(|(p, _)| *p == plural).unwrap().1;
        let stored = stamp(&mut state, object, kind, namespace, name);
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

    /// The requests that tried to write (`POST`, `PUT`).
    pub fn writes(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.starts_with("POST ") || r.starts_with("PUT "))
            .collect()
    }

    /// Answers one request.
    pub fn handle(&self, route: Route, path: &str, body: &Bytes) -> Response<Body> {
        let mut state = self.0.lock();
        state.requests.push(format!("{} {path}", route.method));
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
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
                    let stored = stamp(&mut state, winner, route.kind, &route.namespace, &name);
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
                let stored = stamp(&mut state, body, route.kind, &route.namespace, &name);
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
                let stored = stamp(&mut state, body, route.kind, &route.namespace, name);
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

/// `object` as the API server stores it: kind, name, namespace, a fresh resourceVersion.
fn stamp(state: &mut State, mut object: Value, kind: &str, namespace: &str, name: &str) -> Value {
    state.version += 1;
    object["apiVersion"] = "v1".into();
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

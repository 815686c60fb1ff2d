//! Follows one kind: a kube-rs watcher (list, then watch from the list's resourceVersion,
//! relisting after a `410 Gone`), each object typed as it arrives, changes sent to the
//! source's [`State`](super::state::State).

use std::time::Duration;

use ::kube::api::{Api, DynamicObject};
use ::kube::runtime::watcher::{self, Event};
use ::kube::Client;
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::kinds::{Kind, Rejected};
use super::state::{Change, Update};

/// First wait after an API error; doubled after each one in a row.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest wait after an API error.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Lists and watches `kind` until `updates` closes. While the API server does not serve the
/// kind (404: CRD not installed), it says so once and asks again every `missing_retry`.
pub async fn follow(
    client: Client,
    kind: Kind,
    updates: mpsc::Sender<Update>,
    missing_retry: Duration,
) {
    let resource = kind.api_resource();
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let config = match kind.label_selector() {
        Some(selector) => watcher::Config::default().labels(selector),
        None => watcher::Config::default(),
    };
    let mut missing = false;
    loop {
        // A fresh watcher starts with a list.
        let mut events = watcher(api.clone(), config.clone()).boxed();
        let mut backoff = BACKOFF_MIN;
        while let Some(item) = events.next().await {
            let error = match item {
                Ok(event) => {
                    backoff = BACKOFF_MIN;
                    if missing && matches!(event, Event::InitDone) {
                        info!(%kind, api_version = resource.api_version, "now served: following it");
                        missing = false;
                    }
                    if let Some(change) = change_of(kind, event) {
                        if updates.send(Update { kind, change }).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                Err(error) => error,
            };
            match Fault::of(&error) {
                Fault::Expired { restart } => {
                    debug!(%kind, "resourceVersion expired (410 Gone): listing again");
                    if restart {
                        // kube-rs would retry the watch with the same expired version.
                        break;
                    }
                }
                Fault::Missing => {
                    if missing {
                        debug!(%kind, "still not served");
                    } else {
                        warn!(
                            %kind,
                            api_version = resource.api_version,
                            retry_secs = missing_retry.as_secs_f32(),
                            "not served by the API server (is its CRD installed?): \
                             following the other kinds; asking again periodically"
                        );
                        missing = true;
                    }
                    let change = Change::Missing;
                    if updates.send(Update { kind, change }).await.is_err()
                        || !pause(&updates, missing_retry).await
                    {
                        return;
                    }
                    break;
                }
                Fault::Other => {
                    warn!(
                        %kind,
                        retry_ms = backoff.as_millis() as u64,
                        "Kubernetes API: {error} (check the API server address, credentials \
                         and RBAC: list and watch are needed)"
                    );
                    if !pause(&updates, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// `kube::runtime::watcher`, named apart from this module's own watcher loop.
fn watcher(
    api: Api<DynamicObject>,
    config: watcher::Config,
) -> impl futures::Stream<Item = watcher::Result<Event<DynamicObject>>> {
    ::kube::runtime::watcher(api, config)
}

/// A watcher event as a change of the source's state; a malformed object is logged and
/// left out. An update that makes a pod or service malformed removes it, as the folder does;
/// a malformed new version of a policy leaves the last valid one in force (fail closed).
fn change_of(kind: Kind, event: Event<DynamicObject>) -> Option<Change> {
    Some(match event {
        Event::Init => Change::Relist,
        Event::InitApply(object) => {
            let key = kind.key_of(&object);
            match typed(kind, object) {
                Some(object) => Change::Item(object),
                None if kind.is_policy() => Change::Rejected(key),
                None => return None,
            }
        }
        Event::InitDone => Change::Listed,
        Event::Apply(object) => {
            let key = kind.key_of(&object);
            match typed(kind, object) {
                Some(object) => Change::Applied(object),
                None if kind.is_policy() => Change::Rejected(key),
                None => Change::Deleted(key),
            }
        }
        Event::Delete(object) => Change::Deleted(kind.key_of(&object)),
    })
}

fn typed(kind: Kind, object: DynamicObject) -> Option<crate::manifests::Object> {
    match kind.convert(object) {
        Ok(object) => Some(object),
        Err(rejected) => {
            let Rejected { key, field, .. } = &*rejected;
            warn!(
                %kind,
                namespace = key.namespace,
                name = key.name,
                field = field.as_deref().unwrap_or("-"),
                "object rejected, the rest still applies: {rejected}"
            );
            None
        }
    }
}

/// What a watcher error means for the loop.
enum Fault {
    /// The resourceVersion is too old (410 Gone): list again. `restart` when the watcher
    /// itself would not (the watch request, rather than an event, was refused).
    Expired { restart: bool },
    /// The kind is not served (404).
    Missing,
    /// Anything else: retried with backoff.
    Other,
}

impl Fault {
    fn of(error: &watcher::Error) -> Fault {
        use ::kube::Error::Api;
        use watcher::Error::{InitialListFailed, WatchError, WatchStartFailed};
        match error {
            WatchError(status) if status.code == 410 => Fault::Expired { restart: false },
            WatchStartFailed(Api(status)) if status.code == 410 => Fault::Expired { restart: true },
            InitialListFailed(Api(status)) | WatchStartFailed(Api(status))
                if status.is_not_found() =>
            {
                Fault::Missing
            }
            _ => Fault::Other,
        }
    }
}

/// Waits `duration`; false if the source stopped meanwhile.
async fn pause(updates: &mpsc::Sender<Update>, duration: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => true,
        () = updates.closed() => false,
    }
}

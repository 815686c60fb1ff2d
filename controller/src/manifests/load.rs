//! The folder source: every `*.yaml` / `*.yml` file under a directory, recursively and in sorted
//! path order, each split into documents that are parsed one by one, so that a bad object costs
//! only itself.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::error::{ManifestError, ObjectRef};
use super::skipped::{self, SkippedObject};
use super::split::{shift_line_numbers, split_documents, RawDocument};
use super::validate::{self, FieldError};
use super::{Manifests, Object, ObjectKey, DEFAULT_NAMESPACE};

/// How deep `load_dir` descends; deeper trees are almost surely a symlink loop.
const MAX_DEPTH: usize = 16;

/// Outcome of loading manifests: what loaded, and what did not.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Every object that loaded (and, with [`LastValid`], every one kept in force).
    pub manifests: Manifests,
    /// Every object (or file) that did not, in file order.
    pub errors: Vec<ManifestError>,
    /// Objects whose file has errors now, kept in force in their last valid version (only
    /// with [`LastValid`]; [`load_dir`] keeps nothing).
    pub kept: Vec<KeptObject>,
    /// Objects skipped because amesh does not know or implement their kind, in file order
    /// (built-in Kubernetes kinds that do not configure the mesh are skipped without one).
    pub skipped: Vec<SkippedObject>,
}

/// An object left in force as it last loaded, because its file does not load cleanly now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptObject {
    /// The file that holds (or held) it.
    pub file: PathBuf,
    /// `Kind namespace/name` (`Kind name` for cluster-scoped kinds).
    pub object: String,
}

/// Loads every `*.yaml` / `*.yml` file under `path` (or `path` itself if it is a file).
///
/// Files and directories whose name starts with `.` are skipped: besides editor leftovers,
/// this keeps a ConfigMap mount (`..data` and the timestamped directory it links to) from
/// being read twice.
pub fn load_dir(path: impl AsRef<Path>) -> LoadResult {
    LastValid::default().load_dir(path)
}

/// Loads the documents of one YAML text; `origin` names it in errors.
pub fn load_yaml(origin: impl AsRef<Path>, text: &str) -> LoadResult {
    let file = load_text(origin.as_ref(), text);
    merge(vec![file], Vec::new(), &HashMap::new())
}

/// What each file held the last time it loaded, so that a file that no longer loads cleanly
/// removes nothing: an invalid edit of a policy in force must not take it out of force (a DENY
/// would stop denying, an ALLOW's workload would be open to everyone). The Kubernetes source
/// keeps the last valid version of an object the same way.
///
/// A file with errors keeps in force every object it held before that it does not hold now
/// (the object that failed, and, since a broken document may hide which object it was, the
/// others that went missing with it). A file that cannot be read keeps all it held. A file
/// that was deleted, or that loads without errors, is taken as it is.
#[derive(Debug, Default)]
pub struct LastValid {
    files: HashMap<PathBuf, Vec<Object>>,
    /// Keys of the skipped objects warned about at the last load: each is logged once, not
    /// at every reload of the folder.
    warned: HashSet<String>,
}

impl LastValid {
    /// Loads `path` as [`load_dir`] does, keeping what [`LastValid`] keeps, and remembers
    /// what each file holds for the next load.
    pub fn load_dir(&mut self, path: impl AsRef<Path>) -> LoadResult {
        let path = path.as_ref();
        let mut dir_errors = Vec::new();
        let mut paths = Vec::new();
        if path.is_file() {
            paths.push(path.to_path_buf());
        } else {
            collect_files(path, 0, &mut paths, &mut dir_errors);
        }
        paths.sort();
        let files = paths
            .into_iter()
            .map(|file| match fs::read_to_string(&file) {
                Ok(text) => load_text(&file, &text),
                Err(source) => FileLoad {
                    errors: vec![ManifestError::Read {
                        path: file.clone(),
                        source,
                    }],
                    path: file,
                    objects: Vec::new(),
                    skipped: Vec::new(),
                    unreadable: true,
                },
            })
            .collect();
        let merged: Merged = merge(files, dir_errors, &self.files);
        let mut warned = HashSet::new();
        for skip in &merged.skipped {
            let key = skip.key();
            if !self.warned.contains(&key) {
                tracing::warn!("{skip}");
            }
            warned.insert(key);
        }
        self.warned = warned;
        self.files.clear();
        for (file, object) in &merged.origins {
            self.files
                .entry(file.clone())
                .or_default()
                .push(object.clone());
        }
        merged.into()
    }
}

/// One file's objects and errors, before files are merged.
struct FileLoad {
    path: PathBuf,
    objects: Vec<(ObjectRef, Object)>,
    errors: Vec<ManifestError>,
    skipped: Vec<SkippedObject>,
    /// The file exists but could not be read.
    unreadable: bool,
}

/// `Kind namespace/name` of an object, as errors and [`KeptObject`] write it.
fn describe(object: &Object) -> String {
    let meta = object.metadata();
    let name = meta.name.as_deref().unwrap_or_default();
    match meta.namespace.as_deref() {
        Some(ns) if !object.is_cluster_scoped() => format!("{} {ns}/{name}", object.kind()),
        _ => format!("{} {name}", object.kind()),
    }
}

/// Merged objects with the file each came from (for duplicates and for [`LastValid`]).
struct Merged {
    manifests: Manifests,
    /// Every object that made it in, with its file, in load order.
    origins: Vec<(PathBuf, Object)>,
    errors: Vec<ManifestError>,
    kept: Vec<KeptObject>,
    skipped: Vec<SkippedObject>,
}

impl From<Merged> for LoadResult {
    fn from(m: Merged) -> LoadResult {
        LoadResult {
            manifests: m.manifests,
            errors: m.errors,
            kept: m.kept,
            skipped: m.skipped,
        }
    }
}

/// Merges files in order: the first definition of an object wins (a later one is a
/// [`ManifestError::Duplicate`]); a file with errors adds back what `previous` says it held
/// and now lacks.
fn merge<T: From<Merged>>(
    files: Vec<FileLoad>,
    dir_errors: Vec<ManifestError>,
    previous: &HashMap<PathBuf, Vec<Object>>,
) -> T {
    let mut merged = Merged {
        manifests: Manifests::default(),
        origins: Vec::new(),
        errors: dir_errors,
        kept: Vec::new(),
        skipped: Vec::new(),
    };
    let mut seen: HashMap<(&'static str, ObjectKey), PathBuf> = HashMap::new();
    for file in files {
        let FileLoad {
            path,
            objects,
            errors,
            skipped,
            unreadable,
        } = file;
        merged.skipped.extend(skipped);
        let mut entries: Vec<(ObjectRef, Object, bool)> =
            objects.into_iter().map(|(r, o)| (r, o, false)).collect();
        if !errors.is_empty() || unreadable {
            let held: std::collections::HashSet<_> = entries
                .iter()
                .map(|(_, o, _)| (o.kind(), ObjectKey::of(o.metadata())))
                .collect();
            for old in previous.get(&path).into_iter().flatten() {
                if !held.contains(&(old.kind(), ObjectKey::of(old.metadata()))) {
                    let r = ObjectRef {
                        kind: Some(old.kind().to_owned()),
                        namespace: old.metadata().namespace.clone(),
                        name: old.metadata().name.clone(),
                        ..ObjectRef::default()
                    };
                    entries.push((r, old.clone(), true));
                }
            }
        }
        merged.errors.extend(errors);
        for (object_ref, object, kept) in entries {
            let key = (object.kind(), ObjectKey::of(object.metadata()));
            if let Some(first) = seen.get(&key) {
                merged.errors.push(ManifestError::Duplicate {
                    file: path.clone(),
                    object: object_ref,
                    first: first.clone(),
                });
                continue;
            }
            seen.insert(key, path.clone());
            if kept {
                merged.kept.push(KeptObject {
                    file: path.clone(),
                    object: describe(&object),
                });
            }
            merged.origins.push((path.clone(), object.clone()));
            merged.manifests.insert(object);
        }
    }
    T::from(merged)
}

/// Loads the documents of one file's text.
fn load_text(file: &Path, text: &str) -> FileLoad {
    let mut load = FileLoad {
        path: file.to_path_buf(),
        objects: Vec::new(),
        errors: Vec::new(),
        skipped: Vec::new(),
        unreadable: false,
    };
    for doc in split_documents(text) {
        match parse_document(file, &doc, &mut load.skipped) {
            Ok(Some(parsed)) => load.objects.push(parsed),
            Ok(None) => {}
            Err(e) => load.errors.push(*e),
        }
    }
    load
}

fn collect_files(
    dir: &Path,
    depth: usize,
    files: &mut Vec<PathBuf>,
    errors: &mut Vec<ManifestError>,
) {
    if depth > MAX_DEPTH {
        tracing::warn!(dir = %dir.display(), "not descending further: directory tree too deep");
        return;
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(source) => {
            errors.push(ManifestError::Read {
                path: dir.to_path_buf(),
                source,
            });
            return;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(source) => {
                errors.push(ManifestError::Read {
                    path: dir.to_path_buf(),
                    source,
                });
                continue;
            }
        };
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        // `fs::metadata` follows symlinks, so linked files and directories count.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => collect_files(&path, depth + 1, files, errors),
            Ok(meta) if meta.is_file() && is_yaml(&path) => files.push(path),
            Ok(_) => {}
            Err(source) => errors.push(ManifestError::Read { path, source }),
        }
    }
}

fn is_yaml(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// The kinds we read, by `apiVersion` and `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KnownKind {
    Namespace,
    Node,
    Pod,
    Deployment,
    Service,
    EndpointSlice,
    ServiceAccount,
    Gateway,
    HttpRoute,
    GrpcRoute,
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
    VirtualService,
    DestinationRule,
    HttpLocalRateLimitPolicy,
}

impl KnownKind {
    fn of(api_version: &str, kind: &str) -> Option<Self> {
        const GATEWAY_API: [&str; 2] = [
            "gateway.networking.k8s.io/v1",
            "gateway.networking.k8s.io/v1beta1",
        ];
        const ISTIO_SECURITY: [&str; 2] = ["security.istio.io/v1", "security.istio.io/v1beta1"];
        const ISTIO_NETWORKING: [&str; 3] = [
            "networking.istio.io/v1",
            "networking.istio.io/v1beta1",
            "networking.istio.io/v1alpha3",
        ];
        let known = match (api_version, kind) {
            ("v1", "Namespace") => KnownKind::Namespace,
            ("v1", "Node") => KnownKind::Node,
            ("v1", "Pod") => KnownKind::Pod,
            ("v1", "Service") => KnownKind::Service,
            ("v1", "ServiceAccount") => KnownKind::ServiceAccount,
            ("discovery.k8s.io/v1", "EndpointSlice") => KnownKind::EndpointSlice,
            ("apps/v1", "Deployment") => KnownKind::Deployment,
            (v, "Gateway") if GATEWAY_API.contains(&v) => KnownKind::Gateway,
            (v, "HTTPRoute") if GATEWAY_API.contains(&v) => KnownKind::HttpRoute,
            (v, "GRPCRoute") if GATEWAY_API.contains(&v) => KnownKind::GrpcRoute,
            (v, "AuthorizationPolicy") if ISTIO_SECURITY.contains(&v) => {
                KnownKind::AuthorizationPolicy
            }
            (v, "PeerAuthentication") if ISTIO_SECURITY.contains(&v) => {
                KnownKind::PeerAuthentication
            }
            (v, "RequestAuthentication") if ISTIO_SECURITY.contains(&v) => {
                KnownKind::RequestAuthentication
            }
            (v, "VirtualService") if ISTIO_NETWORKING.contains(&v) => KnownKind::VirtualService,
            (v, "DestinationRule") if ISTIO_NETWORKING.contains(&v) => KnownKind::DestinationRule,
            ("policy.amesh.io/v1alpha1", "HTTPLocalRateLimitPolicy") => {
                KnownKind::HttpLocalRateLimitPolicy
            }
            _ => return None,
        };
        Some(known)
    }

    fn is_cluster_scoped(self) -> bool {
        matches!(self, KnownKind::Namespace | KnownKind::Node)
    }
}

/// One document → the object it holds (with its description for later errors), `None` for an
/// empty document or a kind amesh does not use (added to `skipped` unless it is a built-in
/// Kubernetes kind that does not configure the mesh), or the reason it is rejected.
fn parse_document(
    file: &Path,
    doc: &RawDocument<'_>,
    skipped: &mut Vec<SkippedObject>,
) -> Result<Option<(ObjectRef, Object)>, Box<ManifestError>> {
    let offset = doc.first_line - 1;
    let mut object = ObjectRef {
        document: doc.index,
        line: doc.first_line,
        ..ObjectRef::default()
    };
    // Boxed: the error is several times the size of the happy path's result.
    let invalid = |object: &ObjectRef, field: Option<String>, detail: String| {
        Box::new(ManifestError::Invalid {
            file: file.to_path_buf(),
            object: object.clone(),
            field,
            detail,
        })
    };

    // First pass: a generic value, to learn what the document claims to be.
    let value: Value = serde_yaml::from_str(doc.text).map_err(|e| {
        let detail = format!(
            "not valid YAML: {}",
            shift_line_numbers(&e.to_string(), offset)
        );
        invalid(&object, None, detail)
    })?;
    if value.is_null() {
        return Ok(None);
    }
    let Some(map) = value.as_mapping() else {
        let detail = "a manifest must be a mapping (a Kubernetes object)".to_owned();
        return Err(invalid(&object, None, detail));
    };
    let text_of = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let metadata = map.get("metadata");
    object.kind = text_of(map.get("kind"));
    object.name = text_of(metadata.and_then(|m| m.get("name")));
    object.namespace = text_of(metadata.and_then(|m| m.get("namespace")));
    let api_version = text_of(map.get("apiVersion"));
    let (Some(api_version), Some(kind)) = (api_version, object.kind.clone()) else {
        let field = if object.kind.is_none() {
            "kind"
        } else {
            "apiVersion"
        };
        let detail = format!("{field}: missing, or not a string");
        return Err(invalid(&object, Some(field.into()), detail));
    };
    let Some(known) = KnownKind::of(&api_version, &kind) else {
        // A misspelt security kind must not pass for "a kind amesh does not use": the policy
        // the user meant would silently be missing.
        if api_version.starts_with("policy.amesh.io/") {
            let detail = format!(
                "{api_version} {kind}: amesh knows policy.amesh.io/v1alpha1 \
                 HTTPLocalRateLimitPolicy only"
            );
            return Err(invalid(&object, Some("kind".into()), detail));
        }
        if api_version.starts_with("security.istio.io/") {
            let detail = format!(
                "kind: {kind:?} is not a {api_version} kind amesh knows \
                 (AuthorizationPolicy, PeerAuthentication, RequestAuthentication)"
            );
            return Err(invalid(&object, Some("kind".into()), detail));
        }
        match skipped::classify(&api_version, &kind) {
            Some(reason) => skipped.push(SkippedObject {
                file: file.to_path_buf(),
                object,
                api_version,
                reason,
            }),
            None => tracing::debug!(
                file = %file.display(),
                document = doc.index,
                api_version,
                kind,
                "ignoring a Kubernetes kind that does not configure the mesh"
            ),
        }
        return Ok(None);
    };
    if known.is_cluster_scoped() {
        object.namespace = None;
    } else if object.namespace.as_deref().is_none_or(str::is_empty) {
        object.namespace = Some(DEFAULT_NAMESPACE.to_owned());
    }

    // Second pass: the typed object, from the text again so that errors carry the field path
    // and position (a `Value` has neither).
    let mut typed = parse_typed(known, doc.text).map_err(|rejected| match rejected {
        Rejected::Serde(e) => {
            let message = e.to_string();
            let field = field_of_serde_message(&message);
            invalid(&object, field, shift_line_numbers(&message, offset))
        }
        Rejected::Field(e) => invalid(&object, Some(e.field.clone()), e.to_string()),
    })?;
    if typed.metadata().name.as_deref().is_none_or(str::is_empty) {
        let detail = "metadata.name: missing or empty".to_owned();
        return Err(invalid(&object, Some("metadata.name".into()), detail));
    }
    typed.normalize_namespace();
    Ok(Some((object, typed)))
}

/// Why a document did not become an object.
enum Rejected {
    /// Wrong shape or type (serde's message carries the field path and position).
    Serde(serde_yaml::Error),
    /// Well-typed but invalid value.
    Field(FieldError),
}

fn parse<T: DeserializeOwned>(text: &str) -> Result<T, Rejected> {
    serde_yaml::from_str(text).map_err(Rejected::Serde)
}

fn parse_typed(kind: KnownKind, text: &str) -> Result<Object, Rejected> {
    let object = match kind {
        KnownKind::Namespace => Object::Namespace(parse(text)?),
        KnownKind::Node => Object::Node(parse(text)?),
        KnownKind::Pod => Object::Pod(parse(text)?),
        KnownKind::Deployment => Object::Deployment(parse(text)?),
        KnownKind::Service => Object::Service(parse(text)?),
        KnownKind::EndpointSlice => Object::EndpointSlice(parse(text)?),
        KnownKind::ServiceAccount => Object::ServiceAccount(parse(text)?),
        KnownKind::Gateway => Object::Gateway(parse(text)?),
        KnownKind::HttpRoute => Object::HttpRoute(parse(text)?),
        KnownKind::GrpcRoute => Object::GrpcRoute(parse(text)?),
        KnownKind::AuthorizationPolicy => Object::AuthorizationPolicy(parse(text)?),
        KnownKind::PeerAuthentication => Object::PeerAuthentication(parse(text)?),
        KnownKind::RequestAuthentication => Object::RequestAuthentication(parse(text)?),
        KnownKind::VirtualService => Object::VirtualService(parse(text)?),
        KnownKind::DestinationRule => Object::DestinationRule(parse(text)?),
        KnownKind::HttpLocalRateLimitPolicy => Object::HttpLocalRateLimitPolicy(parse(text)?),
    };
    validate::object(&object).map_err(Rejected::Field)?;
    Ok(object)
}

/// serde_yaml writes `<path>: <message> at line L column C` when the path is below the root.
/// A path never holds whitespace, while a root-level message's first words always do
/// (`invalid type: ...`) or have no `: ` at all (`missing field ...`).
fn field_of_serde_message(message: &str) -> Option<String> {
    let (head, _) = message.split_once(": ")?;
    (!head.is_empty() && !head.contains(char::is_whitespace)).then(|| head.to_owned())
}

/// A hash of every file's path, size, mtime and content under `dir` (hidden entries skipped,
/// as the loader skips them). Content is included because an editor can rewrite a file
/// within one mtime tick at the same size.
pub fn fingerprint(dir: &Path) -> u64 {
    let mut files = Vec::new();
    collect(dir, 0, &mut files);
    files.sort();
    let mut hasher = DefaultHasher::new();
    for path in files {
        path.hash(&mut hasher);
        match fs::metadata(&path) {
            Ok(meta) => {
                meta.len().hash(&mut hasher);
                meta.modified()
                    .ok()
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .hash(&mut hasher);
            }
            Err(e) => e.kind().hash(&mut hasher),
        }
        match fs::read(&path) {
            Ok(bytes) => bytes.hash(&mut hasher),
            Err(e) => e.kind().hash(&mut hasher),
        }
    }
    hasher.finish()
}

fn collect(dir: &Path, depth: usize, files: &mut Vec<PathBuf>) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        // An unreadable folder still changes the fingerprint: it is in the list as itself.
        files.push(dir.to_path_buf());
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => collect(&path, depth + 1, files),
            _ => files.push(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_kinds() {
        assert_eq!(KnownKind::of("v1", "Pod"), Some(KnownKind::Pod));
        assert_eq!(
            KnownKind::of("security.istio.io/v1beta1", "PeerAuthentication"),
            Some(KnownKind::PeerAuthentication)
        );
        assert_eq!(
            KnownKind::of("networking.istio.io/v1", "VirtualService"),
            Some(KnownKind::VirtualService)
        );
        assert_eq!(
            KnownKind::of("networking.istio.io/v1alpha3", "DestinationRule"),
            Some(KnownKind::DestinationRule)
        );
        assert_eq!(KnownKind::of("networking.istio.io/v1", "Gateway"), None);
        assert_eq!(KnownKind::of("apps/v1", "StatefulSet"), None);
        assert_eq!(
            KnownKind::of("discovery.k8s.io/v1", "EndpointSlice"),
            Some(KnownKind::EndpointSlice)
        );
        // Removed from Kubernetes in 1.25; a copy of such a slice is not one amesh reads.
        assert_eq!(
            KnownKind::of("discovery.k8s.io/v1beta1", "EndpointSlice"),
            None
        );
        assert_eq!(KnownKind::of("v2", "Pod"), None);
    }

    #[test]
    fn field_from_message() {
        assert_eq!(
            field_of_serde_message(
                "spec.ports: invalid type: string \"x\", expected a sequence at line 3 column 4"
            ),
            Some("spec.ports".into())
        );
        assert_eq!(
            field_of_serde_message("invalid type: string, expected struct"),
            None
        );
        assert_eq!(field_of_serde_message("missing field `kind`"), None);
    }
}

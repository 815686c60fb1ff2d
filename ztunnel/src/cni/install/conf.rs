//! The installer's reading and editing of a node's CNI configuration, without I/O: which file
//! content is a CNI config (a list or a single plugin), how amesh's entry goes into a list and
//! comes out again, and how a single-plugin config becomes a list.

use std::path::{Path, PathBuf};

use super::json::Json;

/// The `type` of amesh's plugin entry (the binary's name in the CNI bin dir).
pub const PLUGIN_TYPE: &str = "amesh-cni";
/// File extensions the container runtimes load from the CNI conf dir (libcni's set).
pub const CONFIG_EXTENSIONS: &[&str] = &["conflist", "conf", "json"];
/// Appended to a single-plugin config's name for the copy kept while it is converted.
pub const ORIGINAL_SUFFIX: &str = ".amesh-cni-original";
/// The list name Istio's installer gives a converted config that had none.
const DEFAULT_LIST_NAME: &str = "k8s-pod-network";

/// Why a file in the conf dir cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfError {
    #[error("CNI config {}: not JSON: {detail} (is another agent still writing it?)", path.display())]
    NotJson { path: PathBuf, detail: String },
    #[error("CNI config {}: field `{field}` {problem}", path.display())]
    Field {
        path: PathBuf,
        field: String,
        problem: String,
    },
}

/// What a config file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A configuration list (`plugins`).
    List,
    /// One plugin's configuration (`type` at the top).
    Single,
}

/// Whether a file name is one the runtimes load as a CNI config.
pub fn is_config_name(name: &str) -> bool {
    !name.starts_with('.')
        && Path::new(name)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e))
}

/// Reads one file's content. `Ok(None)`: JSON that is not a CNI config, or a list with no
/// network plugin in it (the runtimes skip both); an error: a file the runtime could not load
/// either, which the installer waits on rather than skipping to the next file.
pub fn classify(path: &Path, bytes: &[u8]) -> Result<Option<(Kind, Json)>, ConfError> {
    let not_json = |detail: String| ConfError::NotJson {
        path: path.to_path_buf(),
        detail,
    };
    let field = |field: String, problem: &str| ConfError::Field {
        path: path.to_path_buf(),
        field,
        problem: problem.to_string(),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(not_json("the file is empty".into()));
    }
    let doc: Json = serde_json::from_slice(bytes).map_err(|e| not_json(e.to_string()))?;
    if !matches!(doc, Json::Object(_)) {
        return Ok(None);
    }
    if let Some(plugins) = doc.get("plugins") {
        let Json::Array(plugins) = plugins else {
            return Err(field("plugins".into(), "is not a list"));
        };
        for (i, plugin) in plugins.iter().enumerate() {
            if !matches!(plugin, Json::Object(_)) {
                return Err(field(format!("plugins[{i}]"), "is not an object"));
            }
            if plugin.get("type").and_then(Json::as_str).is_none() {
                return Err(field(
                    format!("plugins[{i}].type"),
                    "is missing or not a string",
                ));
            }
        }
        let networks = plugins.iter().filter(|p| !is_ours(p)).count();
        return Ok((networks > 0).then_some((Kind::List, doc)));
    }
    match doc.get("type") {
        None => Ok(None),
        Some(Json::String(_)) => Ok(Some((Kind::Single, doc))),
        Some(_) => Err(field("type".into(), "is not a string")),
    }
}

/// Whether a plugin entry is amesh's.
fn is_ours(plugin: &Json) -> bool {
    plugin.get("type").and_then(Json::as_str) == Some(PLUGIN_TYPE)
}

/// The plugins of a list (empty when it has none).
fn plugins(list: &Json) -> &[Json] {
    match list.get("plugins") {
        Some(Json::Array(p)) => p,
        _ => &[],
    }
}

/// Whether a list has amesh's entry.
pub fn has_entry(list: &Json) -> bool {
    plugins(list).iter().any(is_ours)
}

/// The list with every amesh entry taken out; everything else as it was.
pub fn without_entry(list: &Json) -> Json {
    let mut out = list.clone();
    let kept = plugins(list)
        .iter()
        .filter(|p| !is_ours(p))
        .cloned()
        .collect();
    out.set("plugins", Json::Array(kept));
    out
}

/// The list with `entry` as its last plugin (after the pod network plugin and the others,
/// which amesh needs as `prevResult`); an older amesh entry anywhere in it is replaced.
pub fn with_entry(list: &Json, entry: &Json) -> Json {
    let mut out = without_entry(list);
    if let Some(Json::Array(p)) = out.get("plugins").cloned() {
        let mut p = p;
        p.push(entry.clone());
        out.set("plugins", Json::Array(p));
    }
    out
}

/// A single-plugin config as a list of that one plugin, the way Istio's installer converts
/// one: `name` and `cniVersion` move up to the list, the rest stays with the plugin.
pub fn to_list(conf: &Json) -> Json {
    let mut plugin = conf.clone();
    let version = plugin.remove("cniVersion");
    let name = plugin
        .remove("name")
        .unwrap_or_else(|| Json::String(DEFAULT_LIST_NAME.into()));
    let mut list = Vec::new();
    if let Some(v) = version {
        list.push(("cniVersion".to_string(), v));
    }
    list.push(("name".to_string(), name));
    list.push(("plugins".to_string(), Json::Array(vec![plugin])));
    Json::Object(list)
}

/// Where the list made from a single-plugin config at `path` goes.
pub fn list_path(path: &Path) -> PathBuf {
    path.with_extension("conflist")
}

/// Where the original of a converted config at `path` is kept until uninstall.
pub fn original_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(ORIGINAL_SUFFIX);
    PathBuf::from(name)
}

/// The settings `amesh-cni` reads from its entry (see `cni::plugin::NetConf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// ztunnel's node-agent socket, as the host sees it.
    pub ztunnel_socket: PathBuf,
    /// The plugin's kubeconfig, as the host sees it.
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces never captured; `None` keeps the plugin's default.
    pub exclude_namespaces: Option<Vec<String>>,
}

impl Entry {
    /// The entry as it goes into the list.
    pub fn to_json(&self) -> Json {
        let path = |p: &Path| Json::String(p.to_string_lossy().into_owned());
        let mut fields = vec![
            ("type".to_string(), Json::String(PLUGIN_TYPE.into())),
            ("ztunnel_socket".to_string(), path(&self.ztunnel_socket)),
        ];
        if let Some(k) = &self.kubeconfig {
            fields.push(("kubeconfig".to_string(), path(k)));
        }
        if let Some(ns) = &self.exclude_namespaces {
            let ns = ns.iter().map(|n| Json::String(n.clone())).collect();
            fields.push(("exclude_namespaces".to_string(), Json::Array(ns)));
        }
        Json::Object(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<(Kind, Json)>, ConfError> {
        classify(Path::new("/d/10-x.conflist"), text.as_bytes())
    }

    #[test]
    fn classifies_lists_singles_and_others() {
        let list = r#"{"name":"n","plugins":[{"type":"bridge"}]}"#;
        assert_eq!(parse(list).unwrap().unwrap().0, Kind::List);
        assert_eq!(
            parse(r#"{"type":"bridge"}"#).unwrap().unwrap().0,
            Kind::Single
        );
        assert!(parse(r#"{"kind":"Config"}"#).unwrap().is_none());
        assert!(parse(r#"[1,2]"#).unwrap().is_none());
        assert!(parse(r#"{"plugins":[]}"#).unwrap().is_none());
        assert!(parse(r#"{"plugins":[{"type":"amesh-cni"}]}"#)
            .unwrap()
            .is_none());
    }

    #[test]
    fn malformed_files_name_the_file_and_the_field() {
        let e = parse(r#"{"plugins":{"type":"bridge"}}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "CNI config /d/10-x.conflist: field `plugins` is not a list"
        );
        let e = parse(r#"{"plugins":[{"type":"a"},{"ipam":{}}]}"#).unwrap_err();
        assert!(e.to_string().contains("`plugins[1].type`"), "{e}");
        let e = parse(r#"{"type":3}"#).unwrap_err();
        assert!(e.to_string().contains("`type`"), "{e}");
        let e = parse(r#"{"plugins":[{"type""#).unwrap_err();
        assert!(matches!(e, ConfError::NotJson { .. }), "{e}");
        assert!(matches!(
            parse("\n").unwrap_err(),
            ConfError::NotJson { .. }
        ));
    }

    #[test]
    fn the_entry_goes_last_once() {
        let entry = Entry {
            ztunnel_socket: "/s".into(),
            kubeconfig: None,
            exclude_namespaces: None,
        }
        .to_json();
        let list: Json = serde_json::from_str(
            r#"{"name":"n","plugins":[{"type":"amesh-cni","ztunnel_socket":"/old"},{"type":"calico"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        let once = with_entry(&list, &entry);
        assert_eq!(with_entry(&once, &entry), once);
        assert_eq!(
            serde_json::to_string(&once).unwrap(),
            r#"{"name":"n","plugins":[{"type":"calico"},{"type":"portmap"},{"type":"amesh-cni","ztunnel_socket":"/s"}]}"#
        );
        assert!(has_entry(&once));
        assert!(!has_entry(&without_entry(&once)));
    }

    #[test]
    fn a_single_config_becomes_a_list() {
        let conf: Json = serde_json::from_str(
            r#"{"cniVersion":"0.3.1","name":"br","type":"bridge","bridge":"cni0"}"#,
        )
        .unwrap();
        assert_eq!(
            serde_json::to_string(&to_list(&conf)).unwrap(),
            r#"{"cniVersion":"0.3.1","name":"br","plugins":[{"type":"bridge","bridge":"cni0"}]}"#
        );
        assert_eq!(
            list_path(Path::new("/d/10-br.conf")),
            Path::new("/d/10-br.conflist")
        );
        assert_eq!(
            original_path(Path::new("/d/10-br.conf")),
            Path::new("/d/10-br.conf.amesh-cni-original")
        );
        assert!(is_config_name("10-br.json") && !is_config_name(".tmp.conflist"));
        assert!(!is_config_name("10-br.conf.amesh-cni-original"));
    }
}

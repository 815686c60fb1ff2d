//! The installer's work on the node's files: the plugin binary in the CNI bin dir, amesh's
//! entry in the primary config of the CNI conf dir, the plugin's kubeconfig, and taking all of
//! it out again. Every write is a temporary file in the same directory renamed over the
//! target, so a runtime reading the directory sees the old file or the new one, never half.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::conf::{self, Entry, Kind};
use super::json::Json;

/// The kubeconfig file the installer writes for the plugin, in the conf dir (its extension
/// is none the runtimes load).
pub const KUBECONFIG_NAME: &str = "amesh-cni-kubeconfig";

/// Where the installer stands with the conf dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// amesh's entry is in the primary config at this path.
    Installed(PathBuf),
    /// No CNI config in the conf dir yet.
    NoPrimary,
    /// Something is in the way: the message says what (retried).
    Blocked(String),
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.amesh-cni-tmp"));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // The umask may have narrowed the mode given at creation.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Whether two paths name the same file.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Copies the plugin binary to `<bin_dir>/amesh-cni` (mode 0755). Returns whether it copied
/// (false when `source` already is that file).
pub fn copy_binary(source: &Path, bin_dir: &Path) -> Result<bool, String> {
    let target = bin_dir.join(conf::PLUGIN_TYPE);
    if same_file(source, &target) {
        return Ok(false);
    }
    if !source.is_file() {
        return Err(format!(
            "the plugin binary {} is not a file",
            source.display()
        ));
    }
    let tmp = bin_dir.join(format!(".{}.amesh-cni-tmp", conf::PLUGIN_TYPE));
    // fs::copy copies in the kernel (copy_file_range): the binary is tens of MB.
    let copied = (|| {
        fs::create_dir_all(bin_dir)?;
        fs::copy(source, &tmp)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
        fs::File::open(&tmp)?.sync_all()?;
        // A rename, so a runtime running the old binary keeps it, and a new run gets the
        // whole new one.
        fs::rename(&tmp, &target)
    })();
    if let Err(e) = copied {
        let _ = fs::remove_file(&tmp);
        return Err(format!(
            "installing the plugin binary {} as {}: {e}",
            source.display(),
            target.display()
        ));
    }
    Ok(true)
}

/// The file mode of `path`, or `default` when it cannot be read.
fn mode_of(path: &Path, default: u32) -> u32 {
    fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(default)
}

/// The config the runtime uses.
pub struct Primary {
    pub path: PathBuf,
    pub kind: Kind,
    /// Its content, parsed.
    pub doc: Json,
    /// Its content as read (kept as it is when a single-plugin config is converted).
    pub bytes: Vec<u8>,
}

/// The first CNI config in `dir` in lexical order of file names, as the runtimes choose it:
/// files that are not CNI configs are skipped; a file that cannot be read or parsed stops the
/// search (the runtime would fail on it too, and it may be half-written).
pub fn primary(dir: &Path) -> Result<Option<Primary>, String> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("listing the CNI conf dir {}: {e}", dir.display())),
    };
    let names = config_names(entries);
    for name in names {
        let path = dir.join(&name);
        if path.is_dir() {
            continue;
        }
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            // Renamed or removed since the listing: not there.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("reading the CNI config {}: {e}", path.display())),
        };
        match conf::classify(&path, &bytes) {
            Ok(Some((kind, doc))) => {
                return Ok(Some(Primary {
                    path,
                    kind,
                    doc,
                    bytes,
                }))
            }
            Ok(None) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(None)
}

/// Puts `entry` into the primary config of `dir` (converting a single-plugin config to a
/// list); writes nothing when it is there already.
pub fn install_entry(dir: &Path, entry: &Entry) -> State {
    let Primary {
        path,
        kind,
        doc,
        bytes,
    } = match primary(dir) {
        Ok(Some(p)) => p,
        Ok(None) => return State::NoPrimary,
        Err(e) => return State::Blocked(e),
    };
    let entry = entry.to_json();
    let mode = mode_of(&path, 0o644);
    let failed =
        |what: &Path, e: io::Error| State::Blocked(format!("writing {}: {e}", what.display()));
    match kind {
        Kind::List => {
            let desired = conf::with_entry(&doc, &entry);
            if desired != doc {
                if let Err(e) = write_atomic(&path, &desired.to_pretty(), mode) {
                    return failed(&path, e);
                }
                info!(config = %path.display(), "added amesh-cni to the CNI chain");
            }
            State::Installed(path)
        }
        Kind::Single => {
            // The original is kept first, so uninstall can put it back even if we stop
            // half-way; it is removed last, so the runtime always has a primary config.
            let original = conf::original_path(&path);
            let list = conf::list_path(&path);
            let desired = conf::with_entry(&conf::to_list(&doc), &entry);
            if let Err(e) = write_atomic(&original, &bytes, mode) {
                return failed(&original, e);
            }
            if let Err(e) = write_atomic(&list, &desired.to_pretty(), mode) {
                return failed(&list, e);
            }
            if let Err(e) = fs::remove_file(&path) {
                return failed(&path, e);
            }
            info!(config = %path.display(), list = %list.display(),
                "converted the single-plugin CNI config to a list and added amesh-cni");
            State::Installed(list)
        }
    }
}

/// Whether `dir`'s primary config carries amesh's entry (the readiness check).
pub fn check(dir: &Path) -> Result<PathBuf, String> {
    match primary(dir)? {
        None => Err(format!("no CNI config in {} yet", dir.display())),
        Some(p) if p.kind == Kind::List && conf::has_entry(&p.doc) => Ok(p.path),
        Some(p) => Err(format!("{} has no amesh-cni entry", p.path.display())),
    }
}

/// Takes amesh's entry out of every config in `dir`; a list made from a single-plugin config
/// goes back to the original file when nobody changed it since (else it stays a list, without
/// the entry). Failures are logged and the rest still done; returns whether all went well.
pub fn uninstall_entries(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return true;
    };
    let names = config_names(entries);
    let mut ok = true;
    for name in names {
        let path = dir.join(&name);
        let doc: Json = match fs::read(&path).map(|b| serde_json::from_slice(&b)) {
            Ok(Ok(doc)) => doc,
            Ok(Err(e)) => {
                warn!(config = %path.display(), "not JSON, left as it is: {e}");
                continue;
            }
            Err(_) => continue,
        };
        let converted_from = ["conf", "json"]
            .iter()
            .map(|ext| path.with_extension(ext))
            .find(|p| p != &path && conf::original_path(p).is_file());
        if !conf::has_entry(&doc) && converted_from.is_none() {
            continue;
        }
        if let Err(e) = remove_from(&path, &doc, converted_from) {
            warn!(config = %path.display(), "could not take amesh-cni out: {e}");
            ok = false;
        }
    }
    ok
}

/// Takes the entry out of the list at `path`; restores the single-plugin config it was made
/// from (`original`) when the list is still just that config.
fn remove_from(path: &Path, doc: &Json, original: Option<PathBuf>) -> io::Result<()> {
    let cleaned = conf::without_entry(doc);
    let mode = mode_of(path, 0o644);
    let Some(original) = original else {
        write_atomic(path, &cleaned.to_pretty(), mode)?;
        info!(config = %path.display(), "removed amesh-cni from the CNI chain");
        return Ok(());
    };
    let kept = conf::original_path(&original);
    let bytes = fs::read(&kept)?;
    let unchanged = matches!(
        conf::classify(&original, &bytes),
        Ok(Some((Kind::Single, single))) if conf::to_list(&single) == cleaned
    );
    if unchanged {
        write_atomic(&original, &bytes, mode_of(&kept, mode))?;
        fs::remove_file(path)?;
        info!(config = %original.display(), "restored the original CNI config");
    } else {
        write_atomic(path, &cleaned.to_pretty(), mode)?;
        warn!(config = %path.display(), original = %original.display(),
            "the converted CNI config changed since amesh converted it: it stays a list \
             (without amesh-cni)");
    }
    fs::remove_file(&kept)
}

/// The plugin's kubeconfig for the API server at `server`, from the pod's service account
/// (its token and CA), as JSON (which every kubeconfig reader takes as YAML).
pub fn kubeconfig(server: &str, sa_dir: &Path) -> Result<Vec<u8>, String> {
    let read = |name: &str| {
        let p = sa_dir.join(name);
        fs::read(&p).map_err(|e| format!("reading the service account's {}: {e}", p.display()))
    };
    let token = String::from_utf8(read("token")?)
        .map_err(|_| format!("{}: not text", sa_dir.join("token").display()))?;
    let ca = read("ca.crt")?;
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "amesh-cni", "user": {"token": token.trim()}}],
        "contexts": [{"name": "amesh-cni", "context": {"cluster": "local", "user": "amesh-cni"}}],
        "current-context": "amesh-cni",
    });
    let mut out = serde_json::to_vec_pretty(&doc).map_err(|e| e.to_string())?;
    out.push(b'\n');
    Ok(out)
}

/// Writes `bytes` at `path` (mode 0600: it holds a token) unless it holds them already.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool, String> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    write_atomic(path, bytes, 0o600)
        .map(|()| true)
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The names in a CNI conf dir listing that may be CNI configs, in the runtime's (lexical)
/// order: what both the primary-config search and uninstall walk.
fn config_names(entries: fs::ReadDir) -> Vec<String> {
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| conf::is_config_name(n))
        .collect();
    names.sort();
    names
}

//! The run directory `/run/amesh-lab/ID/` of a lab: its lock, its index, `state.json`, the
//! generated manifests and the process logs.
//!
//! Liveness is a lock: whoever holds the `flock` on `ID/lock` keeps the lab alive (the process
//! that called `Lab::up`, or the lab's keeper process once the lab is detached). The kernel drops
//! the lock when its holder dies, so a lab whose lock can be taken is the leftover of a crash.
//! Creating a lab (id, index, directory, lock) happens under the global `/run/amesh-lab/.lock`,
//! so concurrent `up`s and `cleanup_stale` never see a half-claimed lab.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::plan::{AddressPlan, LabId, PlanError, MAX_LABS};

/// Where all labs keep their run directories.
pub const RUN_ROOT: &str = "/run/amesh-lab";
const GLOBAL_LOCK: &str = ".lock";
const LOCK: &str = "lock";
const INDEX: &str = "index";
const GLOBAL_LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// A run directory operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lab {0} already exists and is running (see `amesh-lab status`, or `amesh-lab down --id {0}`)")]
    Exists(LabId),
    #[error("all {MAX_LABS} lab slots are in use (`amesh-lab down --all` removes them)")]
    Full,
    #[error(
        "timed out after {0:?} waiting for {RUN_ROOT}/{GLOBAL_LOCK}: another amesh-lab seems stuck"
    )]
    GlobalLockTimeout(Duration),
    #[error(transparent)]
    Plan(#[from] PlanError),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RunDirError {
    let path = path.display().to_string();
    move |source| RunDirError::Io { what, path, source }
}

/// The run directory of lab `id`.
pub fn lab_dir(id: &LabId) -> PathBuf {
    Path::new(RUN_ROOT).join(id.as_str())
}

/// The run directory of a lab this process owns; the lock is held while this value lives.
#[derive(Debug)]
pub struct RunDir {
    id: LabId,
    path: PathBuf,
    plan: AddressPlan,
    /// Holds the lab's flock: dropping it (or dying) makes the lab look stale.
    lock: File,
}

impl RunDir {
    /// Claims a new lab: under the global lock picks the id (given, or a random unused one) and
    /// the smallest free index, creates the directory, takes its lock and records the index.
    pub fn create(id: Option<LabId>) -> Result<RunDir, RunDirError> {
        let _global = GlobalLock::acquire()?;
        let id = match id {
            Some(id) if lab_dir(&id).exists() => return Err(RunDirError::Exists(id)),
            Some(id) => id,
            None => loop {
                let id = LabId::random();
                if !lab_dir(&id).exists() {
                    break id;
                }
            },
        };
        let used: Vec<u8> = existing_ids().iter().filter_map(read_index).collect();
        let index = (0..MAX_LABS)
            .find(|i| !used.contains(i))
            .ok_or(RunDirError::Full)?;
        let path = lab_dir(&id);
        std::fs::create_dir_all(&path).map_err(io_err("cannot create run directory", &path))?;
        let lock_path = path.join(LOCK);
        let lock = File::create(&lock_path).map_err(io_err("cannot create lock", &lock_path))?;
        if !try_flock(&lock) {
            // Nobody else can know this fresh directory yet; still, never run an unlocked lab.
            return Err(RunDirError::Exists(id));
        }
        let index_path = path.join(INDEX);
        std::fs::write(&index_path, index.to_string())
            .map_err(io_err("cannot write", &index_path))?;
        for sub in ["manifests", "logs"] {
            let p = path.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err("cannot create", &p))?;
        }
        Ok(RunDir {
            plan: AddressPlan::new(index)?,
            id,
            path,
            lock,
        })
    }

    pub fn id(&self) -> &LabId {
        &self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn plan(&self) -> AddressPlan {
        self.plan
    }

    /// Where the generated manifests (what the controller reads) go.
    pub fn manifests_dir(&self) -> PathBuf {
        self.path.join("manifests")
    }

    /// Where process logs go.
    pub fn logs_dir(&self) -> PathBuf {
        self.path.join("logs")
    }

    /// The lock's file descriptor, for a keeper process to inherit.
    pub fn lock_fd(&self) -> RawFd {
        self.lock.as_raw_fd()
    }

    /// Deletes the directory; the lock goes with `self`.
    pub fn remove(self) -> Result<(), RunDirError> {
        remove_dir(&self.path)
    }
}

/// Removes a run directory; one that is already gone is fine.
pub fn remove_dir(path: &Path) -> Result<(), RunDirError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("cannot remove run directory", path)(e)),
    }
}

/// Ids of all labs with a run directory, alive or stale, sorted.
pub fn existing_ids() -> Vec<LabId> {
    let mut ids: Vec<LabId> = std::fs::read_dir(RUN_ROOT)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .filter_map(|e| LabId::new(e.file_name().to_str()?).ok())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// The index recorded for lab `id`.
pub fn read_index(id: &LabId) -> Option<u8> {
    std::fs::read_to_string(lab_dir(id).join(INDEX))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Proof that a lab is not alive: holds its lock (if it has a lock file) until dropped, so the
/// lab cannot come back to life while it is being reaped.
#[derive(Debug)]
pub struct StaleGuard {
    _lock: Option<File>,
}

/// Takes the lock of lab `id` if nobody holds it, i.e. if the lab is not alive. A lab without a
/// lock file (a crash right after `mkdir`) is not alive either.
pub fn lock_if_stale(id: &LabId) -> Option<StaleGuard> {
    let path = lab_dir(id).join(LOCK);
    match File::options().read(true).write(true).open(&path) {
        Ok(f) => try_flock(&f).then_some(StaleGuard { _lock: Some(f) }),
        Err(_) => Some(StaleGuard { _lock: None }),
    }
}

/// Whether lab `id` is alive (someone holds its lock).
pub fn is_alive(id: &LabId) -> bool {
    lock_if_stale(id).is_none()
}

fn try_flock(f: &File) -> bool {
    // SAFETY: flock on a valid open descriptor; no memory is involved.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// The machine-wide lock that serialises creating and reaping labs.
pub struct GlobalLock {
    _file: File,
}

impl GlobalLock {
    pub fn acquire() -> Result<GlobalLock, RunDirError> {
        let root = Path::new(RUN_ROOT);
        std::fs::create_dir_all(root).map_err(io_err("cannot create", root))?;
        let path = root.join(GLOBAL_LOCK);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("cannot open", &path))?;
        let deadline = Instant::now() + GLOBAL_LOCK_TIMEOUT;
        while !try_flock(&file) {
            if Instant::now() >= deadline {
                return Err(RunDirError::GlobalLockTimeout(GLOBAL_LOCK_TIMEOUT));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(GlobalLock { _file: file })
    }
}

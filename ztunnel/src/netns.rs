//! Network namespaces: doing socket work inside a pod's netns from the node's ztunnel.
//!
//! A socket belongs to the namespace it was created in, whatever thread uses it later. So each
//! pod gets one small worker thread that entered the pod's netns once (`setns`) and creates
//! sockets on request; the sockets then run on the ordinary Tokio runtime. Entering a netns per
//! request would cost a thread spawn per outbound connection.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use nix::sched::CloneFlags;

type Job = Box<dyn FnOnce() + Send>;

/// A handle on a network namespace with a worker thread living inside it.
#[derive(Clone)]
pub struct Netns {
    inner: Arc<Inner>,
}

struct Inner {
    /// Path the namespace was opened from (for logs and the state file).
    path: PathBuf,
    /// Namespace inode, to recognise the same netns under another path.
    inode: u64,
    jobs: parking_lot::Mutex<mpsc::Sender<Job>>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}: {source} (does the pod sandbox still exist?)")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace {path}: {source} (ztunnel needs CAP_SYS_ADMIN)")]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the worker thread of network namespace {0} is gone")]
    WorkerGone(PathBuf),
}

impl Netns {
    /// Opens the namespace at `path` (`/var/run/netns/x`, `/proc/<pid>/ns/net`) and starts its
    /// worker thread; fails if the namespace cannot be entered.
    pub fn open(path: &Path) -> Result<Netns, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let inode = std::os::unix::fs::MetadataExt::ino(&file.metadata().map_err(|source| {
            NetnsError::Open {
                path: path.to_path_buf(),
                source,
            }
        })?);
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let name = format!("netns-{inode}");
        std::thread::Builder::new()
            .name(name)
            // The worker only creates sockets: a small stack keeps a node with many pods cheap.
            .stack_size(128 << 10)
            .spawn(move || {
                let entered = nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if ok {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                }
            })
            .map_err(|source| NetnsError::Enter {
                path: path.to_path_buf(),
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(NetnsError::Enter {
                    path: path.to_path_buf(),
                    source,
                })
            }
            Err(_) => return Err(NetnsError::WorkerGone(path.to_path_buf())),
        }
        Ok(Netns {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                inode,
                jobs: parking_lot::Mutex::new(tx),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn inode(&self) -> u64 {
        self.inner.inode
    }

    /// Runs `f` inside the namespace and waits for its result without blocking the runtime.
    pub async fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move || {
            let _ = tx.send(f());
        }))?;
        rx.await.map_err(|_| self.gone())?
    }

    /// Runs `f` inside the namespace, blocking the calling thread (for use outside async code).
    pub fn run_blocking<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        self.submit(Box::new(move || {
            let _ = tx.send(f());
        }))?;
        rx.recv().map_err(|_| self.gone())?
    }

    fn submit(&self, job: Job) -> io::Result<()> {
        self.inner.jobs.lock().send(job).map_err(|_| self.gone())
    }

    fn gone(&self) -> io::Error {
        io::Error::other(NetnsError::WorkerGone(self.inner.path.clone()))
    }
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Netns({})", self.inner.path.display())
    }
}

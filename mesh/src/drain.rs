//! Graceful drain: a signal that tells listeners to stop accepting and connections to finish.

use tokio::sync::watch;

/// The trigger side, held by whoever decides to shut down (a signal handler, a test).
#[derive(Debug)]
pub struct Drain {
    tx: watch::Sender<bool>,
}

/// The watching side, cloned into every listener and connection.
#[derive(Debug, Clone)]
pub struct DrainWatch {
    rx: watch::Receiver<bool>,
}

impl Drain {
    pub fn new() -> (Drain, DrainWatch) {
        let (tx, rx) = watch::channel(false);
        (Drain { tx }, DrainWatch { rx })
    }

    /// Starts draining; idempotent.
    pub fn start(&self) {
        self.tx.send_replace(true);
    }
}

impl DrainWatch {
    /// Resolves once draining has started (at once if it already has, or if the trigger is gone:
    /// a dropped trigger can never say "keep running", so we treat it as a drain).
    pub async fn signaled(&mut self) {
        let _ = self.rx.wait_for(|d| *d).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Resolves on SIGTERM or SIGINT (never, where the handlers cannot be installed): the start of
/// a proxy's drain.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

//! Signals become cancellation: the first SIGTERM/SIGINT cancels `graceful` (stop receiving,
//! finish in-flight work within the grace period), a second one cancels `immediate` (release
//! what is unfinished and exit within a few seconds), a third exits the process at once
//! (unfinished messages then reappear after their visibility timeout).

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// The two stages of stopping. `immediate` is a child of nothing and implies `graceful`.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Stop receiving; let in-flight work finish within the grace period.
    pub graceful: CancellationToken,
    /// Stop waiting for in-flight work; release it and exit.
    pub immediate: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests the graceful stage (what SIGTERM does).
    pub fn begin(&self) {
        self.graceful.cancel();
    }

    /// Requests the immediate stage (what a second signal does).
    pub fn force(&self) {
        self.graceful.cancel();
        self.immediate.cancel();
    }
}

/// Spawns the task that turns SIGTERM/SIGINT into `shutdown` stages.
pub fn spawn_signal_listener(shutdown: Shutdown) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "shutdown requested: finishing in-flight work"
        );
        shutdown.begin();
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::warn!(
            signal = name,
            "second signal: releasing unfinished messages and exiting"
        );
        shutdown.force();
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::error!(
            signal = name,
            "third signal: exiting now; unfinished messages reappear after their visibility timeout"
        );
        // 128 + SIGTERM, as a shell reports a process killed by it.
        std::process::exit(143);
    });
    Ok(())
}

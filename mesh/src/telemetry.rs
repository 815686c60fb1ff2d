//! Logging of every amesh binary: a `tracing` subscriber filtered by `RUST_LOG` (default
//! `info`), text or JSON lines, and a [`LogReload`] that replaces the filter at runtime (the
//! admin endpoint's `/logging?level=`).

use tracing_subscriber::{fmt, prelude::*, reload, EnvFilter};

/// Replaces the log filter at runtime; the argument uses `RUST_LOG` syntax (`debug`,
/// `info,mesh::hbone=debug`). The error says why a filter was not accepted.
pub type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (tracing's default format).
    #[default]
    Text,
    /// One JSON object per line, for log collectors (`LOG_FORMAT=json`).
    Json,
}

impl LogFormat {
    /// Istio's `LOG_FORMAT` values: `json`, anything else is text.
    pub fn from_setting(value: Option<&str>) -> LogFormat {
        match value {
            Some("json") => LogFormat::Json,
            _ => LogFormat::Text,
        }
    }
}

/// Installs the process's subscriber: filter from `RUST_LOG` (`info` when unset or invalid),
/// lines in `format` on stdout. Returns the handle that changes the filter later. Call once, before anything logs; a
/// second call leaves the first subscriber in place and returns an error.
pub fn init(format: LogFormat) -> Result<LogReload, String> {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // Colour codes only for a person at a terminal: a log file or a collector reading the
    // container's stdout gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let installed = match format {
        LogFormat::Json => registry.with(fmt::layer().json()).try_init(),
        LogFormat::Text => registry.with(fmt::layer().with_ansi(ansi)).try_init(),
    };
    installed.map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(Box::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }))
}

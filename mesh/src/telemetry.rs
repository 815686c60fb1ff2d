//! Logging of every amesh binary: a `tracing` subscriber filtered by `RUST_LOG` (default
//! `info`), text or JSON lines, and a [`LogReload`] that changes the filter at runtime (the
//! admin endpoint's `/logging?level=`, in istioctl's syntax).
//!
//! The rules every binary follows (through [`init`], [`init_with_default`] where the default
//! level is not `info`, or [`init_to`] for stderr: the controller, the lab, the benchmarks):
//! text lines carry ANSI colour codes only when their output is a terminal, so a
//! log file or a collector reading a container's stdout gets plain text; `LOG_FORMAT=json`
//! (Istio's setting; [`LogFormat::from_env`]) writes one flat JSON object per line, the message
//! and every field at the top level next to `timestamp`, `level` and `target`.

use parking_lot::Mutex;

use tracing_subscriber::{fmt, prelude::*, reload, EnvFilter};

/// Changes the log filter at runtime. Keeps the filter the process started with (for
/// `reset`) and the one in force, so a change to one target keeps the others.
pub struct LogReload {
    initial: String,
    current: Mutex<String>,
    apply: ApplyFilter,
}

/// Installs a filter (`RUST_LOG` syntax) or says why it could not.
type ApplyFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

impl LogReload {
    /// `initial` is the filter in force (`RUST_LOG` syntax); `apply` installs a new one and
    /// says why it could not.
    pub fn new(
        initial: impl Into<String>,
        apply: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static,
    ) -> LogReload {
        let initial = initial.into();
        LogReload {
            current: Mutex::new(initial.clone()),
            initial,
            apply: Box::new(apply),
        }
    }

    /// The filter in force, in `RUST_LOG` syntax.
    pub fn current(&self) -> String {
        self.current.lock().clone()
    }

    /// Applies an istioctl-style change (see [`merge_levels`]) and returns the new filter.
    pub fn change(&self, level: &str, reset: bool) -> Result<String, String> {
        let mut current = self.current.lock();
        let base = if reset { &self.initial } else { &*current };
        let next = merge_levels(base, level)?;
        (self.apply)(&next)?;
        *current = next.clone();
        Ok(next)
    }
}

/// The levels a log line or a target may be set to.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Applies `change`, a comma-separated list of `<level>` (every target) or
/// `<target>:<level>` (istioctl's syntax; `<target>=<level>` is accepted too), to `base`, a
/// filter in `RUST_LOG` syntax. A bare level replaces the default level and drops every
/// per-target directive (`level=debug` means everything at debug); a target's level replaces what `base` said
/// of that target and keeps the rest. `access` is the access log's target in amesh as in
/// Istio. An empty `change` leaves `base` as it is. The error names the bad item.
pub fn merge_levels(base: &str, change: &str) -> Result<String, String> {
    let mut default: Option<String> = None;
    let mut targets: Vec<(String, String)> = Vec::new();
    for directive in base.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match directive.split_once('=') {
            Some((target, level)) => targets.push((target.to_string(), level.to_string())),
            None if LEVELS.contains(&directive.to_ascii_lowercase().as_str()) => {
                default = Some(directive.to_ascii_lowercase())
            }
            // A target without a level (`mesh::hbone`) enables all of it: keep it as it is.
            None => targets.push((directive.to_string(), String::new())),
        }
    }
    for item in change.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (target, level) = match item.rsplit_once([':', '=']) {
            Some((t, l)) => (Some(t.trim()), l.trim()),
            None => (None, item),
        };
        let level = level.to_ascii_lowercase();
        if !LEVELS.contains(&level.as_str()) {
            return Err(format!(
                "{item:?}: {level:?} is not a level (one of {})",
                LEVELS.join(", ")
            ));
        }
        match target {
            Some("") => return Err(format!("{item:?}: the target before ':' is empty")),
            Some(t) if !t.chars().all(|c| c.is_alphanumeric() || "_:.-".contains(c)) => {
                return Err(format!("{item:?}: {t:?} is not a target name"))
            }
            Some(t) => {
                targets.retain(|(have, _)| have != t);
                targets.push((t.to_string(), level));
            }
            None => {
                default = Some(level);
                targets.clear();
            }
        }
    }
    let mut out: Vec<String> = default.into_iter().collect();
    out.extend(
        targets
            .into_iter()
            .map(|(t, l)| if l.is_empty() { t } else { format!("{t}={l}") }),
    );
    Ok(out.join(","))
}

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

    /// `LOG_FORMAT` of this process's environment.
    pub fn from_env() -> LogFormat {
        LogFormat::from_setting(std::env::var("LOG_FORMAT").ok().as_deref())
    }
}

/// The stream log lines go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogOutput {
    /// The proxies' and the controller's: what a container runtime collects.
    #[default]
    Stdout,
    /// For programs whose stdout is their answer (the CLI, benchmarks printing results, the
    /// lab's apps whose stdout a test reads).
    Stderr,
}

/// Installs the process's subscriber: filter from `RUST_LOG` (`info` when unset or invalid),
/// lines in `format` on stdout. Returns the handle that changes the filter later. Call once,
/// before anything logs; a second call leaves the first subscriber in place and returns an
/// error.
pub fn init(format: LogFormat) -> Result<LogReload, String> {
    init_with_default(format, "info")
}

/// As [`init`], with `default` as the filter when `RUST_LOG` is unset or invalid.
pub fn init_with_default(format: LogFormat, default: &str) -> Result<LogReload, String> {
    init_to(format, default, LogOutput::Stdout)
}

/// As [`init_with_default`], writing to `output`.
pub fn init_to(format: LogFormat, default: &str, output: LogOutput) -> Result<LogReload, String> {
    let (filter, initial) = match std::env::var("RUST_LOG") {
        Ok(v) if EnvFilter::try_new(&v).is_ok() => (EnvFilter::new(&v), v),
        _ => (EnvFilter::new(default), default.to_string()),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // Colour codes only for a person at a terminal: a log file or a collector reading the
    // container's output gets plain text.
    let ansi = match output {
        LogOutput::Stdout => std::io::IsTerminal::is_terminal(&std::io::stdout()),
        LogOutput::Stderr => std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let writer = move || -> Box<dyn std::io::Write> {
        match output {
            LogOutput::Stdout => Box::new(std::io::stdout()),
            LogOutput::Stderr => Box::new(std::io::stderr()),
        }
    };
    let installed = match format {
        // Flat: the message, the event's fields and those of the spans it happened in at the
        // top level, as Istio's JSON lines have them (tracing's own JSON nests span fields).
        LogFormat::Json => registry.with(json_layer(writer)).try_init(),
        LogFormat::Text => registry
            .with(fmt::layer().with_ansi(ansi).with_writer(writer))
            .try_init(),
    };
    installed.map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(LogReload::new(initial, move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }))
}

/// The layer of `LOG_FORMAT=json`: [`FlatJson`] lines to `writer`, span fields recorded as
/// JSON so they can be lifted to the top level.
fn json_layer<S, W>(writer: W) -> fmt::Layer<S, fmt::format::JsonFields, FlatJson, W>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> fmt::MakeWriter<'w> + 'static,
{
    fmt::layer()
        .fmt_fields(fmt::format::JsonFields::new())
        .event_format(FlatJson)
        .with_ansi(false)
        .with_writer(writer)
}

/// One JSON object per event: `timestamp` (RFC 3339, UTC), `level`, `target`, `message`, the
/// fields of the spans the event is in (outermost first, so an inner span's value wins) and the
/// event's own fields (which win over the spans'), all at the top level.
struct FlatJson;

impl<S, N> fmt::FormatEvent<S, N> for FlatJson
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &fmt::FmtContext<'_, S, N>,
        mut writer: fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use fmt::time::FormatTime;
        let mut line = serde_json::Map::new();
        let mut now = String::new();
        fmt::time::SystemTime.format_time(&mut fmt::format::Writer::new(&mut now))?;
        line.insert("timestamp".into(), now.into());
        let meta = event.metadata();
        line.insert("level".into(), meta.level().as_str().into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                // With `JsonFields`, a span's recorded fields are a JSON object.
                let Some(fields) = extensions.get::<fmt::FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(serde_json::Value::Object(fields)) =
                    serde_json::from_str::<serde_json::Value>(fields)
                {
                    line.extend(fields);
                }
            }
        }
        event.record(&mut JsonVisitor(&mut line));
        line.insert("target".into(), meta.target().into());
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

/// Writes an event's fields into a JSON object: numbers and booleans as such, the rest as
/// text (`Display` where the value was recorded with `%`, else `Debug`).
struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::merge_levels;

    /// A writer into a shared buffer, to read what the layer wrote.
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<parking_lot::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_are_flat_with_span_fields_lifted() {
        use tracing_subscriber::prelude::*;
        let buf = Buffer::default();
        let out = buf.clone();
        let subscriber =
            tracing_subscriber::registry().with(super::json_layer(move || out.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let pod = tracing::info_span!("pod", pod = "default/client", attempt = 1u64);
            let _pod = pod.enter();
            let conn = tracing::info_span!("conn", peer = %"10.0.0.1:5000", attempt = 2u64);
            let _conn = conn.enter();
            tracing::info!(target: "access", bytes_sent = 7u64, ok = true, dst.addr = %"10.0.0.2:80", "connection complete");
        });
        let text = String::from_utf8(buf.0.lock().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj["message"], "connection complete");
        assert_eq!(obj["level"], "INFO");
        assert_eq!(obj["target"], "access");
        assert_eq!(obj["pod"], "default/client");
        assert_eq!(obj["peer"], "10.0.0.1:5000");
        // The inner span's value wins.
        assert_eq!(obj["attempt"], 2);
        assert_eq!(obj["bytes_sent"], 7);
        assert_eq!(obj["ok"], true);
        assert_eq!(obj["dst.addr"], "10.0.0.2:80");
        assert!(obj["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(
            obj.values().all(|v| !v.is_object() && !v.is_array()),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'));
    }

    #[test]
    fn istioctl_levels_merge_into_the_filter() {
        assert_eq!(
            merge_levels("info", "access:debug").unwrap(),
            "info,access=debug"
        );
        assert_eq!(
            merge_levels("info,access=debug", "access:warn,mesh::hbone:trace").unwrap(),
            "info,access=warn,mesh::hbone=trace"
        );
        assert_eq!(merge_levels("info,access=debug", "debug").unwrap(), "debug");
        assert_eq!(
            merge_levels("warn", "access=INFO").unwrap(),
            "warn,access=info"
        );
        assert_eq!(merge_levels("info,mesh", "").unwrap(), "info,mesh");
    }

    #[test]
    fn bad_levels_are_named() {
        let e = merge_levels("info", "access:loud").unwrap_err();
        assert!(e.contains("\"loud\" is not a level"), "{e}");
        let e = merge_levels("info", ":debug").unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = merge_levels("info", "a b:debug").unwrap_err();
        assert!(e.contains("not a target"), "{e}");
        assert!(merge_levels("info", "ztunnel=loud").is_err());
    }
}

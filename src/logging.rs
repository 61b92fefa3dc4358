//! Logging: to journald natively when running under systemd's journal, otherwise to stderr in
//! a human format. `RUST_LOG` overrides the configured level.

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

/// The live filter, for [`set_level`].
static FILTER: OnceLock<reload::Handle<EnvFilter, tracing_subscriber::Registry>> = OnceLock::new();

/// Installs the global subscriber. Returns where logs go, for the startup line.
pub fn init(level: &str) -> &'static str {
    let filter = rust_log()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let _ = FILTER.set(handle);
    // systemd sets JOURNAL_STREAM when stdout/stderr are connected to the journal.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            // No field prefix: `message_id` becomes MESSAGE_ID, `collector` COLLECTOR, ...
            let journald = journald.with_syslog_identifier("collector".into()).with_field_prefix(None);
            if tracing_subscriber::registry().with(filter).with(journald).try_init().is_ok() {
                return "journald";
            }
            return "stderr";
        }
    }
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .fmt_fields(HumanFields);
    let _ = tracing_subscriber::registry().with(filter).with(stderr).try_init();
    "stderr"
}

/// `RUST_LOG` when set and not empty.
fn rust_log() -> Option<String> {
    std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty())
}

/// Changes the log filter of the running process (a reload). `RUST_LOG`, when set, still
/// wins, as at start.
pub fn set_level(level: &str) -> Result<(), String> {
    if rust_log().is_some() {
        return Err("RUST_LOG is set and overrides log.level".into());
    }
    let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    FILTER.get().ok_or("logging not initialised")?.reload(filter).map_err(|e| e.to_string())
}

/// Field formatting for stderr: the message, then `key=value` pairs — except on health
/// records, whose fields are for journald and would only clutter the report lines. The
/// `message_id` itself is journald's business too.
struct HumanFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for HumanFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut v = Collect::default();
        fields.record(&mut v);
        let mut first = true;
        if let Some(m) = &v.message {
            write!(writer, "{m}")?;
            first = false;
        }
        if v.message_id.as_deref() == Some(crate::journal::HEALTH) {
            return Ok(());
        }
        for (k, val) in &v.fields {
            if !first {
                write!(writer, " ")?;
            }
            write!(writer, "{k}={val}")?;
            first = false;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Collect {
    message: Option<String>,
    message_id: Option<String>,
    fields: Vec<(&'static str, String)>,
}

impl tracing::field::Visit for Collect {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = Some(format!("{value:?}")),
            "message_id" => self.message_id = Some(format!("{value:?}")),
            name => self.fields.push((name, format!("{value:?}"))),
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "message" => self.message = Some(value.to_string()),
            "message_id" => self.message_id = Some(value.to_string()),
            name => self.fields.push((name, value.to_string())),
        }
    }
}

//! Logging: `tracing` to standard error (standard output is reserved for command results such
//! as `vsm tenant create`'s JSON), `pretty` for people or `json` for log pipelines.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. A filter that does not parse is a configuration error.
pub fn init(cfg: &LogConfig) -> Result<(), String> {
    let filter = EnvFilter::try_new(&cfg.filter)
        .map_err(|e| format!("invalid configuration: key `log.filter`: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    // Already installed (tests start several servers in one process): keep the first.
    let _ = result;
    Ok(())
}

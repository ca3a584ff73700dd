//! Logging: `tracing` to standard error (standard output is reserved for command results such
//! as `vsm tenant create`'s JSON), `pretty` for people or `json` for log pipelines.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. A filter that does not parse is a configuration error.
pub fn init(cfg: &LogConfig) -> Result<(), String> {
    let filter = parse_filter(cfg)?;
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

/// Whether `log.filter` parses, without installing anything (`vsm config check`).
pub fn check_filter(cfg: &LogConfig) -> Result<(), String> {
    parse_filter(cfg).map(drop)
}

fn parse_filter(cfg: &LogConfig) -> Result<EnvFilter, String> {
    EnvFilter::try_new(&cfg.filter)
        .map_err(|e| format!("invalid configuration: key `log.filter`: {e}"))
}

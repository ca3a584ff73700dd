//! What each bot command answers (CONTRACT §9), read from the linked tenant's data in the
//! caller's tenant transaction. Every reply is plain text (no parse mode, so no tenant text can
//! inject markup) and bounded: each part is cut to a fixed size and every query has a limit.

use chrono::Utc;

use crate::jobs::JobState;
use crate::jobs::storage as jobs;
use crate::repo::TenantTx;
use crate::schemas::jobs::health_check;
use crate::schemas::vsm::system_state::{self, SYSTEM_NAMES};
use crate::schemas::vsm::{episode, policy};
use crate::workers::episode_analyzer::intake::{self, EpisodeInput, IntakeError};

/// Longest rendering of one system's state in `/status`.
const MAX_STATE_CHARS: usize = 300;
/// Longest episode title or policy name shown in a list.
const MAX_NAME_CHARS: usize = 80;
/// Episodes `/episodes` shows.
const EPISODES_SHOWN: i64 = 5;
/// Policies `/policies` shows (one more is read to know whether there are more).
const POLICIES_SHOWN: i64 = 20;
/// Longest title `/report` gives an episode (the table allows 500).
const MAX_TITLE_CHARS: usize = 100;

pub const HELP: &str = "Commands:\n\
/status - each system's latest state, your queues, the last health check\n\
/episodes - the 5 latest episodes\n\
/policies - the active policies\n\
/report <text> - file an episode\n\
/help - this list";

/// The one line an unlinked chat gets, whatever it asked.
pub const NOT_LINKED: &str =
    "This chat is not linked to a tenant. Link it with PUT /v1/telegram/chats/{chat_id}.";

/// The reply a chat over its command rate gets, at most once per window.
pub const SLOW_DOWN: &str =
    "Too many commands from this chat; slow down and try again in a minute.";

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Start,
    Help,
    Status,
    Episodes,
    Policies,
    Report(String),
    Unknown(String),
}

impl Command {
    pub fn parse(name: &str, args: &str) -> Command {
        match name {
            "start" => Command::Start,
            "help" => Command::Help,
            "status" => Command::Status,
            "episodes" => Command::Episodes,
            "policies" => Command::Policies,
            "report" => Command::Report(args.to_owned()),
            other => Command::Unknown(other.to_owned()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Db(#[from] crate::repo::DbError),
}

/// Runs `command` for the transaction's tenant and returns the reply text. `/report` creates
/// its episode in the same transaction, so the caller's commit makes it and the reply real
/// together.
pub async fn run(tx: &mut TenantTx, command: &Command) -> Result<String, CommandError> {
    Ok(match command {
        Command::Start => format!("Hello! This chat is linked to your vsm tenant.\n\n{HELP}"),
        Command::Help => HELP.to_owned(),
        Command::Status => status(tx).await?,
        Command::Episodes => episodes(tx).await?,
        Command::Policies => policies(tx).await?,
        Command::Report(text) => report(tx, text).await?,
        Command::Unknown(name) => format!("Unknown command /{name}. Send /help for the list."),
    })
}

async fn status(tx: &mut TenantTx) -> Result<String, CommandError> {
    let states = system_state::latest_all(tx).await?;
    let mut out = String::from("Status\n");
    for (i, name) in SYSTEM_NAMES.iter().enumerate() {
        let n = i as i16 + 1;
        match states.iter().find(|s| s.system == n) {
            Some(s) => out.push_str(&format!(
                "S{n} {name} v{}: {}\n",
                s.version,
                cut(&s.state.to_string(), MAX_STATE_CHARS)
            )),
            None => out.push_str(&format!("S{n} {name}: not set\n")),
        }
    }
    // The tenant's own jobs (row-level security), by queue; queues come from the
    // configuration, so their number is fixed.
    let mut queues: Vec<(String, i64, i64)> = Vec::new();
    for (queue, state, n) in jobs::counts(tx).await? {
        let waiting = matches!(
            state,
            JobState::Available | JobState::Scheduled | JobState::Retryable
        );
        let running = state == JobState::Executing;
        if !waiting && !running {
            continue;
        }
        let entry = match queues.iter_mut().find(|(q, _, _)| *q == queue) {
            Some(e) => e,
            None => {
                queues.push((queue, 0, 0));
                queues.last_mut().expect("just pushed")
            }
        };
        if waiting {
            entry.1 += n;
        } else {
            entry.2 += n;
        }
    }
    queues.sort();
    if queues.is_empty() {
        out.push_str("Queues: nothing waiting or running\n");
    } else {
        out.push_str("Queues:\n");
        for (queue, waiting, running) in &queues {
            out.push_str(&format!(
                "  {}: {waiting} waiting, {running} running\n",
                cut(queue, MAX_NAME_CHARS)
            ));
        }
    }
    match health_check::latest(tx).await? {
        Some((status, _, at)) => out.push_str(&format!(
            "Last health check: {status} at {}",
            at.format("%Y-%m-%d %H:%M:%S UTC")
        )),
        None => out.push_str("Last health check: none yet"),
    }
    Ok(out)
}

async fn episodes(tx: &mut TenantTx) -> Result<String, CommandError> {
    let latest = episode::latest(tx, EPISODES_SHOWN).await?;
    if latest.is_empty() {
        return Ok("No episodes yet. File one with /report <text>.".to_owned());
    }
    let mut out = String::from("Latest episodes:\n");
    for e in &latest {
        out.push_str(&format!(
            "- {} [{}] {}\n",
            cut(&e.title, MAX_NAME_CHARS),
            e.status.as_str(),
            e.created_at.format("%Y-%m-%d %H:%M UTC")
        ));
    }
    Ok(out.trim_end().to_owned())
}

async fn policies(tx: &mut TenantTx) -> Result<String, CommandError> {
    let active = policy::active_names(tx, Utc::now(), POLICIES_SHOWN + 1).await?;
    if active.is_empty() {
        return Ok("No active policies.".to_owned());
    }
    let mut out = String::from("Active policies:\n");
    for (name, priority) in active.iter().take(POLICIES_SHOWN as usize) {
        out.push_str(&format!(
            "- {} (priority {priority})\n",
            cut(name, MAX_NAME_CHARS)
        ));
    }
    if active.len() > POLICIES_SHOWN as usize {
        out.push_str("... and more (see GET /v1/policies)\n");
    }
    Ok(out.trim_end().to_owned())
}

async fn report(tx: &mut TenantTx, text: &str) -> Result<String, CommandError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok("Usage: /report <what happened>".to_owned());
    }
    let first_line = text.lines().next().unwrap_or(text).trim();
    let input = EpisodeInput {
        title: cut(first_line, MAX_TITLE_CHARS),
        content: text.to_owned(),
        source: Some("telegram".to_owned()),
        kind: None,
        tags: Vec::new(),
    };
    match intake::submit(tx, input).await {
        Ok(created) => Ok(format!(
            "Episode {} filed; its analysis is queued.",
            created.id
        )),
        // The text broke a field rule (a NUL character): say so instead of retrying.
        Err(IntakeError::Invalid { field, message }) => {
            Ok(format!("Not filed: {field} {message}."))
        }
        Err(IntakeError::Db(crate::repo::DbError::Validation { field, message })) => {
            Ok(format!("Not filed: {field} {message}."))
        }
        Err(IntakeError::Db(e)) => Err(e.into()),
    }
}

/// `s` cut to `max` characters, with `…` when something was cut.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_by_name() {
        assert_eq!(Command::parse("status", ""), Command::Status);
        assert_eq!(
            Command::parse("report", "disk full"),
            Command::Report("disk full".into())
        );
        assert_eq!(
            Command::parse("frobnicate", ""),
            Command::Unknown("frobnicate".into())
        );
    }

    #[test]
    fn cut_bounds_by_characters() {
        assert_eq!(cut("short", 10), "short");
        let long = cut(&"é".repeat(400), 300);
        assert_eq!(long.chars().count(), 300);
        assert!(long.ends_with('…'));
    }
}

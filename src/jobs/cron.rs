//! Cron: each `[[jobs.cron]]` entry inserts one job per slot of its expression, cluster-wide.
//! Every node ticks every second; claiming a slot is an insert into `job_cron_slots` whose
//! primary key (name, slot) admits one node, in the same transaction as the job. A slot is only
//! fired within [`GRACE`] of its time, so a cluster that was down does not replay old slots.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use uuid::Uuid;

use futures_util::future::BoxFuture;

use super::{Registry, storage};
use crate::config::CronEntry;
use crate::maintenance::{Pass, Periodic};
use crate::repo::{DbError, Repo};

/// How late a slot may still be fired.
pub const GRACE: Duration = Duration::from_secs(60);

/// The slot of `cron` that `now` falls in: its latest time not after `now`, if within
/// [`GRACE`].
pub fn current_slot(cron: &Cron, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let slot = cron.find_previous_occurrence(&now, true).ok()?;
    let late = (now - slot).to_std().ok()?;
    (late <= GRACE).then_some(slot)
}

/// Fires every entry whose current slot (at `now`) no node has claimed yet. `seen` remembers
/// slots this node already settled, so a tick costs no query until the next slot. Returns the
/// jobs this node inserted.
pub async fn tick(
    repo: &Repo,
    registry: &Registry,
    entries: &[CronEntry],
    now: DateTime<Utc>,
    seen: &mut HashMap<String, DateTime<Utc>>,
) -> Result<Vec<Uuid>, DbError> {
    let mut inserted = Vec::new();
    for entry in entries {
        let Some(slot) = current_slot(entry.expression.cron(), now) else {
            continue;
        };
        if seen.get(&entry.name) == Some(&slot) {
            continue;
        }
        // `vsm work` refuses to start with a cron entry naming an unknown worker.
        let Some(job) = registry.job(&entry.worker, entry.args.clone()) else {
            continue;
        };
        let job = job.meta(serde_json::json!({"cron": entry.name, "slot": slot}));
        let mut tx = repo.system_tx().await?;
        let claimed = storage::insert_cron(&mut tx, &entry.name, slot, &job).await?;
        tx.commit().await?;
        seen.insert(entry.name.clone(), slot);
        if let Some(id) = claimed {
            tracing::info!(cron = %entry.name, %slot, job_id = %id, "cron job inserted");
            inserted.push(id);
        }
    }
    Ok(inserted)
}

/// The cron duty: ticks every second (slots are at least a second apart).
pub struct CronTicker {
    repo: Repo,
    registry: Registry,
    entries: Vec<CronEntry>,
    seen: HashMap<String, DateTime<Utc>>,
}

impl CronTicker {
    /// `None` without entries: nothing to tick.
    pub fn new(repo: Repo, registry: Registry, entries: Vec<CronEntry>) -> Option<Self> {
        (!entries.is_empty()).then(|| Self {
            repo,
            registry,
            entries,
            seen: HashMap::new(),
        })
    }
}

impl Periodic for CronTicker {
    type Error = DbError;

    fn name(&self) -> &'static str {
        "cron"
    }

    fn every(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn run_once(&mut self) -> BoxFuture<'_, Result<Pass, DbError>> {
        Box::pin(async move {
            tick(
                &self.repo,
                &self.registry,
                &self.entries,
                Utc::now(),
                &mut self.seen,
            )
            .await?;
            Ok(Pass::Done)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CronSchedule;
    use chrono::TimeZone;

    #[test]
    fn parses_five_and_six_fields_and_rejects_garbage() {
        assert!(CronSchedule::parse("0 * * * *").is_ok());
        assert!(CronSchedule::parse("*/5 * * * * *").is_ok());
        assert!(CronSchedule::parse("@hourly").is_ok());
        for bad in ["", "61 * * * *", "* * *", "nonsense"] {
            assert!(CronSchedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn current_slot_is_the_last_time_within_the_grace() {
        let hourly = CronSchedule::hourly();
        let hourly = hourly.cron();
        let at = |h, m, s| Utc.with_ymd_and_hms(2026, 11, 28, h, m, s).unwrap();
        assert_eq!(current_slot(hourly, at(10, 0, 0)), Some(at(10, 0, 0)));
        assert_eq!(current_slot(hourly, at(10, 0, 59)), Some(at(10, 0, 0)));
        assert_eq!(current_slot(hourly, at(10, 1, 0)), Some(at(10, 0, 0)));
        assert_eq!(current_slot(hourly, at(10, 1, 1)), None);
        assert_eq!(current_slot(hourly, at(10, 59, 59)), None);
    }
}

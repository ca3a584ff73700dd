//! Wake-ups: one dedicated connection LISTENs on the job channels. An insert (or staging,
//! rescue, resume) wakes the queue's producer at once; a cancel stops the job if it runs here.
//! If the connection drops it is reopened; producers keep polling meanwhile, so nothing is
//! lost, only delayed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use diesel_async::RunQueryDsl;
use futures_util::StreamExt;
use tokio::sync::Notify;
use uuid::Uuid;

use super::storage::{CANCEL_CHANNEL, NOTIFY_CHANNEL};
use crate::backoff::Backoff;
use crate::repo::Repo;
use crate::shutdown::Shutdown;

/// Called with the id of every cancelled job.
pub type OnCancel = Box<dyn Fn(Uuid) + Send + Sync>;

pub async fn run(
    repo: Repo,
    wakes: HashMap<String, Arc<Notify>>,
    on_cancel: OnCancel,
    shutdown: Shutdown,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            outcome = listen(&repo, &wakes, &on_cancel) => {
                tracing::warn!(error = %outcome, "job notification listener lost; polling until it is back");
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Listens until the connection fails; returns why.
async fn listen(repo: &Repo, wakes: &HashMap<String, Arc<Notify>>, on_cancel: &OnCancel) -> String {
    let mut conn = match crate::repo::establish(repo.url().expose(), Duration::from_secs(5)).await {
        Ok(conn) => conn,
        Err(e) => return e.message,
    };
    for channel in [NOTIFY_CHANNEL, CANCEL_CHANNEL] {
        if let Err(e) = diesel::sql_query(format!("LISTEN {channel}"))
            .execute(&mut conn)
            .await
        {
            return e.to_string();
        }
    }
    // Anything inserted while we were not listening.
    for wake in wakes.values() {
        wake.notify_one();
    }
    let mut stream = std::pin::pin!(conn.notifications_stream());
    while let Some(next) = stream.next().await {
        match next {
            Ok(n) if n.channel == NOTIFY_CHANNEL => {
                if let Some(wake) = wakes.get(&n.payload) {
                    wake.notify_one();
                }
            }
            Ok(n) if n.channel == CANCEL_CHANNEL => {
                if let Ok(id) = n.payload.parse::<Uuid>() {
                    on_cancel(id);
                }
            }
            Ok(_) => {}
            Err(e) => return e.to_string(),
        }
    }
    "connection closed".to_owned()
}

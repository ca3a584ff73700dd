//! `telegram_command` (queue `notifications`): runs one bot command that arrived through the
//! webhook (CONTRACT §9). The webhook only records the update and queues this job, so it answers
//! Telegram within milliseconds; the work happens here.
//!
//! The chat's tenant is looked up first (`vsm_resolve_telegram_chat`, the one cross-tenant
//! reader of the link). An unlinked chat gets the one refusal line and nothing else. A linked
//! chat's command runs in its tenant's transaction, under that tenant's row-level security, and
//! the reply (a `notification_sender` job), the `telegram.command` event and whatever the
//! command changed (`/report`'s episode) commit together.

pub mod commands;
pub mod inbound;
pub mod update_pruner;

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use crate::events::payloads::{self, TelegramCommand as CommandRan};
use crate::jobs::{Job, JobContext, JobResult, NewJob, Outcome, Worker, job_for, parse_args};
use crate::schemas::telegram::chat;
use crate::workers::notification_sender::{self, Message};
use commands::Command;

pub const NAME: &str = "telegram_command";

pub struct TelegramCommand;

/// One command from one chat, as the webhook read it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    pub chat_id: i64,
    /// Lowercase command name without `/` or `@bot`.
    pub command: String,
    /// The text after the command (at most 4096 characters).
    pub args: String,
}

pub fn job(command: &inbound::CommandText) -> NewJob {
    job_for(
        &TelegramCommand,
        json!(Args {
            chat_id: command.chat_id,
            command: command.name.clone(),
            args: command.args.clone(),
        }),
    )
}

impl Worker for TelegramCommand {
    fn name(&self) -> &'static str {
        NAME
    }

    fn queue(&self) -> &'static str {
        "notifications"
    }

    /// A person is waiting for the answer.
    fn priority(&self) -> i16 {
        1
    }

    fn max_attempts(&self) -> i32 {
        5
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(30)
    }

    fn check_args(&self, args: &Value) -> Result<(), crate::jobs::ArgsError> {
        parse_args::<Args>(args).map(drop)
    }

    fn perform<'a>(&'a self, ctx: &'a JobContext, job: &'a Job) -> BoxFuture<'a, JobResult> {
        Box::pin(async move {
            let args: Args = parse_args(&job.args)?;
            let mut sys = ctx.repo.system_tx().await?;
            let Some(tenant) = chat::resolve(&mut sys, args.chat_id).await? else {
                notification_sender::enqueue_unlinked_reply(
                    &mut sys,
                    args.chat_id,
                    commands::NOT_LINKED.to_owned(),
                )
                .await?;
                sys.commit().await?;
                return Ok(Outcome::Complete);
            };
            sys.rollback().await?;

            let command = Command::parse(&args.command, &args.args);
            let mut tx = ctx.repo.tenant_tx(tenant).await?;
            let reply = commands::run(&mut tx, &command).await?;
            payloads::emit(
                &mut tx,
                tenant,
                &CommandRan {
                    chat_id: args.chat_id,
                    command: args.command.clone(),
                    args: args.args.clone(),
                },
            )
            .await?;
            notification_sender::enqueue(
                &mut tx,
                tenant,
                Message::Telegram {
                    chat_id: args.chat_id,
                    text: reply,
                },
            )
            .await?;
            tx.commit().await?;
            Ok(Outcome::Complete)
        })
    }
}

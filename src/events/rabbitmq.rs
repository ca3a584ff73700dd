//! RabbitMQ fan-out: the relay publishes every event to the durable topic exchange
//! (`events.exchange`, default `vsm.events`; routing key = topic; persistent messages; publisher
//! confirms), and every `vsm serve` consumes from its own exclusive queue bound to it with `#`.
//! Both reconnect by themselves with backoff; nothing is lost while the broker is away because
//! the relay only marks events published once confirmed, and a consumer catches up from the
//! database after it reconnects.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use amqprs::callbacks::{ChannelCallback, DefaultConnectionCallback};
use amqprs::channel::{
    BasicConsumeArguments, BasicPublishArguments, Channel, ConfirmSelectArguments,
    ExchangeDeclareArguments, QueueBindArguments, QueueDeclareArguments,
};
use amqprs::connection::Connection;
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use super::hub::Hub;
use super::{Event, WireEvent, store};
use crate::backoff::Backoff;
use crate::config::ServiceUrl;
use crate::health::{Probe, ProbeError};
use crate::repo::{DbError, Repo};
use crate::shutdown::Shutdown;

/// Why the broker link failed. Logged by the loops that reconnect; never shown to clients.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error(transparent)]
    Url(#[from] crate::health::AmqpUrlError),
    #[error("cannot connect to RabbitMQ at {at}: {source}")]
    Connect {
        at: String,
        #[source]
        source: amqprs::error::Error,
    },
    /// A broker operation (`open channel`, `declare exchange vsm.events`, …) failed.
    #[error("RabbitMQ {what} failed: {source}")]
    Broker {
        what: String,
        #[source]
        source: amqprs::error::Error,
    },
    #[error("cannot encode an event: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("broker refused a message")]
    Nacked,
    #[error("channel closed")]
    ChannelClosed,
    #[error("no publisher confirm in time")]
    ConfirmTimeout,
    #[error("queue_declare returned no queue")]
    NoQueue,
    #[error("network failure")]
    NetworkFailure,
    #[error("catching up from the database: {0}")]
    CatchUp(#[from] DbError),
}

/// `map_err` for a broker operation.
fn broker(what: impl Into<String>) -> impl FnOnce(amqprs::error::Error) -> AmqpError {
    let what = what.into();
    move |source| AmqpError::Broker { what, source }
}

/// How long the relay waits for the broker to confirm a batch.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff between the consumer's reconnect attempts.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_CAP: Duration = Duration::from_secs(5);

async fn open(url: &ServiceUrl, exchange: &str) -> Result<(Connection, Channel), AmqpError> {
    let args = crate::health::amqp_connection_args(url)?;
    let conn = Connection::open(&args)
        .await
        .map_err(|source| AmqpError::Connect {
            at: url.host_port(),
            source,
        })?;
    conn.register_callback(DefaultConnectionCallback)
        .await
        .map_err(broker("register connection callback"))?;
    let channel = conn
        .open_channel(None)
        .await
        .map_err(broker("open channel"))?;
    let mut declare = ExchangeDeclareArguments::new(exchange, "topic");
    declare.durable = true;
    channel
        .exchange_declare(declare)
        .await
        .map_err(broker(format!("declare exchange {exchange}")))?;
    Ok((conn, channel))
}

enum Confirm {
    Ack { tag: u64, multiple: bool },
    Nack,
    Closed,
}

/// Forwards the channel's confirms to the publisher.
struct Confirms(mpsc::UnboundedSender<Confirm>);

#[async_trait::async_trait]
impl ChannelCallback for Confirms {
    async fn close(&mut self, _: &Channel, _: CloseChannel) -> Result<(), amqprs::error::Error> {
        let _ = self.0.send(Confirm::Closed);
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        let _ = self.0.send(Confirm::Ack {
            tag: ack.delivery_tag(),
            multiple: ack.mutiple(),
        });
    }
    async fn publish_nack(&mut self, _: &Channel, _: Nack) {
        let _ = self.0.send(Confirm::Nack);
    }
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

struct Link {
    conn: Connection,
    channel: Channel,
    confirms: mpsc::UnboundedReceiver<Confirm>,
    next_tag: u64,
}

/// The relay's side: publishes batches and returns once the broker confirmed all of them.
pub struct Publisher {
    url: ServiceUrl,
    exchange: String,
    link: Option<Link>,
}

impl Publisher {
    pub fn new(url: ServiceUrl, exchange: String) -> Self {
        Self {
            url,
            exchange,
            link: None,
        }
    }

    /// The open link, reconnecting when there is none or it went stale.
    async fn link(&mut self) -> Result<&mut Link, AmqpError> {
        let link = match self.link.take() {
            Some(l) if l.conn.is_open() && l.channel.is_open() => l,
            _ => self.connect().await?,
        };
        Ok(self.link.insert(link))
    }

    async fn connect(&self) -> Result<Link, AmqpError> {
        let (conn, channel) = open(&self.url, &self.exchange).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        channel
            .register_callback(Confirms(tx))
            .await
            .map_err(broker("register channel callback"))?;
        channel
            .confirm_select(ConfirmSelectArguments::default())
            .await
            .map_err(broker("confirm select"))?;
        tracing::info!(broker = %self.url.host_port(), "relay connected to RabbitMQ");
        Ok(Link {
            conn,
            channel,
            confirms: rx,
            next_tag: 1,
        })
    }

    /// Publishes `events` in order; `Ok` only when the broker confirmed every one. On error the
    /// link is dropped, so the next call reconnects; the caller retries the same events.
    pub async fn publish(&mut self, events: &[Event]) -> Result<(), AmqpError> {
        let result = self.try_publish(events).await;
        if result.is_err() {
            if let Some(link) = self.link.take() {
                let _ = link.conn.close().await;
            }
        }
        result
    }

    async fn try_publish(&mut self, events: &[Event]) -> Result<(), AmqpError> {
        let exchange = self.exchange.clone();
        let link = self.link().await?;
        let mut outstanding = BTreeSet::new();
        for event in events {
            let body = serde_json::to_vec(&WireEvent::from(event))?;
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json")
                .with_message_id(&event.seq.to_string())
                .finish();
            link.channel
                .basic_publish(
                    props,
                    body,
                    BasicPublishArguments::new(&exchange, &event.topic),
                )
                .await
                .map_err(broker("publish"))?;
            outstanding.insert(link.next_tag);
            link.next_tag += 1;
        }
        let wait = async {
            while !outstanding.is_empty() {
                match link.confirms.recv().await {
                    Some(Confirm::Ack {
                        tag,
                        multiple: true,
                    }) => {
                        outstanding = outstanding.split_off(&(tag + 1));
                    }
                    Some(Confirm::Ack { tag, .. }) => {
                        outstanding.remove(&tag);
                    }
                    Some(Confirm::Nack) => return Err(AmqpError::Nacked),
                    Some(Confirm::Closed) | None => return Err(AmqpError::ChannelClosed),
                }
            }
            Ok(())
        };
        tokio::time::timeout(CONFIRM_TIMEOUT, wait)
            .await
            .map_err(|_| AmqpError::ConfirmTimeout)?
    }
}

/// Whether this instance's consumer is connected (its `/ready` check).
#[derive(Clone, Default)]
pub struct ConsumerState {
    connected: Arc<AtomicBool>,
}

impl Probe for ConsumerState {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    /// A broker outage loses nothing (the outbox keeps every event and this consumer catches up
    /// from the database on reconnect), so it must not take the instance out of the load
    /// balancer: `/ready` says `degraded`, still 200 (CONTRACT §5).
    fn critical(&self) -> bool {
        false
    }

    fn check(&self) -> BoxFuture<'_, Result<(), ProbeError>> {
        let connected = self.connected.load(Ordering::Acquire);
        Box::pin(async move {
            if connected {
                Ok(())
            } else {
                Err(ProbeError::Down("event consumer not connected"))
            }
        })
    }
}

/// Consumes this instance's exclusive queue into the hub until shutdown, reconnecting with
/// backoff. After each reconnect it first catches up from the database on everything the hub
/// has not seen, so clients never miss what was published while the link was down.
pub async fn consume(
    url: ServiceUrl,
    exchange: String,
    hub: Hub,
    repo: Repo,
    state: ConsumerState,
    shutdown: Shutdown,
) {
    let mut backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_CAP);
    while !shutdown.is_triggered() {
        let result = tokio::select! {
            r = consume_once(&url, &exchange, &hub, &repo, &state) => r,
            _ = shutdown.wait() => Ok(()),
        };
        state.connected.store(false, Ordering::Release);
        if let Err(e) = result {
            tracing::warn!(error = %e, "event consumer lost its broker link; reconnecting");
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = shutdown.wait() => {}
            }
        } else {
            backoff.reset();
        }
    }
}

async fn consume_once(
    url: &ServiceUrl,
    exchange: &str,
    hub: &Hub,
    repo: &Repo,
    state: &ConsumerState,
) -> Result<(), AmqpError> {
    let (conn, channel) = open(url, exchange).await?;
    let (queue, _, _) = channel
        .queue_declare(QueueDeclareArguments::exclusive_server_named())
        .await
        .map_err(broker("declare queue"))?
        .ok_or(AmqpError::NoQueue)?;
    channel
        .queue_bind(QueueBindArguments::new(&queue, exchange, "#"))
        .await
        .map_err(broker("bind queue"))?;
    let mut args = BasicConsumeArguments::new(&queue, "");
    args.manual_ack(false);
    let (_tag, mut rx) = channel
        .basic_consume_rx(args.finish())
        .await
        .map_err(broker("consume"))?;
    // Bound and consuming: anything published from now on is in `rx`. Fill in what came before.
    catch_up(repo, hub).await?;
    state.connected.store(true, Ordering::Release);
    tracing::info!(broker = %url.host_port(), %queue, "event consumer connected");
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else {
                    return Err(AmqpError::ChannelClosed);
                };
                let Some(body) = msg.content else { continue };
                match serde_json::from_slice::<WireEvent>(&body) {
                    Ok(wire) => hub.dispatch([Event::from(wire)]),
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed event message"),
                }
            }
            _ = conn.listen_network_io_failure() => {
                return Err(AmqpError::NetworkFailure);
            }
        }
    }
}

/// Dispatches every sequenced event after the hub's high-water mark, read as the system role.
pub async fn catch_up(repo: &Repo, hub: &Hub) -> Result<(), DbError> {
    loop {
        let after = hub.last_seq();
        let mut tx = repo.system_tx().await?;
        // Paged by size as well as count: a backlog of large events is never all in memory.
        let page = store::after(&mut tx, after, 1000, store::PAGE_BYTES).await?;
        tx.commit().await?;
        if page.is_empty() {
            return Ok(());
        }
        hub.dispatch(page);
    }
}

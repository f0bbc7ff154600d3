//! Amazon SQS, through the AWS SDK for Rust. Topic `T` is the queue `T` (a FIFO queue is
//! `T.fifo`), one lane; a missing queue is created (standard) with a dead-letter queue
//! `T-dlq` and a redrive policy above weir's own attempts. The worker receives with long
//! polls, several in flight (`source`, each queue's task in `lane`), deletes a batch's messages once it committed, and
//! extends the visibility of what it holds; weir sends with its record's key and headers as
//! message attributes (`publisher`, the mapping in `attributes`).
//!
//! SQS hands any message to any consumer: keyed state is exact with one worker per queue
//! (README, "Brokers").

mod attributes;
mod lane;
mod publisher;
mod source;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::QueueAttributeName;

use crate::broker::WantedTopic;
use crate::error::{Error, Result};

pub use attributes::{SqsRecord, message_of, record_of};
pub(crate) use publisher::Publisher;
pub(crate) use source::SqsSource;

/// Receives of a message after which SQS moves it to the queue's dead-letter queue on its
/// own: a backstop, above weir's own attempts, for a message that crashes every worker that
/// takes it (weir's retries run in the worker and are not receives).
const MAX_RECEIVE_COUNT: u32 = 20;
/// The visibility timeout of a queue whose attributes do not say (SQS's default).
const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);
/// The retention period of a queue whose attributes do not say (SQS's default, 4 days).
const DEFAULT_RETENTION: Duration = Duration::from_secs(4 * 24 * 3600);

/// How a worker reaches SQS.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Receives in flight per queue.
    pub(crate) receives: usize,
    /// Messages a lane holds received and not yet deleted at most: its queue capacity, so
    /// receiving stops while it is full.
    pub(crate) capacity: usize,
}

/// A queue as the worker uses it.
#[derive(Debug, Clone)]
pub(crate) struct Queue {
    url: String,
    /// How long a received message stays invisible to other receives.
    visibility: Duration,
    /// How long the queue keeps a message.
    retention: Duration,
    fifo: bool,
}

/// The SQS client, shared by the worker's source and publisher.
#[derive(Clone)]
pub(crate) struct Connection(Arc<Inner>);

pub(crate) struct Inner {
    settings: Settings,
    client: Client,
    /// Queues looked up or created, by name.
    queues: Mutex<HashMap<String, Queue>>,
    /// Since when requests have failed for want of an answer, while they do.
    down_since: Mutex<Option<Instant>>,
    /// Held while a queue is looked up or created.
    creating: tokio::sync::Mutex<()>,
}

impl std::ops::Deref for Connection {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("sqs::Connection")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The SQS client of the AWS configuration in the environment (region, endpoint,
/// credentials), speaking HTTPS through rustls.
async fn client() -> Result<Client, String> {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .load()
        .await;
    if config.region().is_none() {
        return Err("no AWS region is configured: set AWS_REGION (or a profile's region)".into());
    }
    Ok(Client::new(&config))
}

/// An SQS client of the AWS configuration in the environment (`AWS_REGION`,
/// `AWS_ENDPOINT_URL_SQS`, credentials), checked to answer (listing one queue) within
/// `timeout`; for tools beside the workers too (`weir::state::sqs::connect`).
pub async fn checked_client(timeout: Duration) -> Result<Client> {
    let unreachable = |cause: String| {
        Error::config(
            "brokers (WEIR_BROKERS)",
            format!("SQS did not answer within {timeout:?}: {cause}"),
        )
    };
    let client = client().await.map_err(unreachable)?;
    let listed = tokio::time::timeout(timeout, client.list_queues().max_results(1).send()).await;
    match listed {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(unreachable(describe(&e))),
        Err(_) => Err(unreachable("no answer".into())),
    }
}

/// The messages of `queue` that wait (`ApproximateNumberOfMessages`) and that were received
/// and not deleted (`...NotVisible`); `None`: no such queue. For tools.
pub async fn queue_counts(client: &Client, queue: &str) -> Result<Option<(i64, i64)>, String> {
    let url = match client.get_queue_url().queue_name(queue).send().await {
        Ok(found) => found.queue_url().unwrap_or_default().to_owned(),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_queue_does_not_exist()) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(describe(&e)),
    };
    let read = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let count = |name: QueueAttributeName| {
        read.attributes()
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    Ok(Some((
        count(QueueAttributeName::ApproximateNumberOfMessages),
        count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )))
}

/// The error's message with its causes (the SDK's own says only "service error").
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

impl Connection {
    /// Connects, checking within `timeout` that SQS answers (listing one queue).
    pub(crate) async fn connect(
        brokers: &str,
        settings: Settings,
        timeout: Duration,
    ) -> Result<Self> {
        let rest = brokers.trim().trim_start_matches("sqs://");
        if !rest.is_empty() {
            return Err(Error::config(
                "brokers (WEIR_BROKERS)",
                format!(
                    "{brokers:?}: SQS is selected by `sqs://` alone; the region, endpoint and credentials come from the AWS configuration (AWS_REGION, AWS_ENDPOINT_URL_SQS, ...)"
                ),
            ));
        }
        let client = checked_client(timeout).await?;
        Ok(Self(Arc::new(Inner {
            settings,
            client,
            queues: Mutex::default(),
            down_since: Mutex::default(),
            creating: tokio::sync::Mutex::new(()),
        })))
    }

    /// Since when requests have gone unanswered, while they do.
    pub(crate) fn disconnected_since(&self) -> Option<Instant> {
        *lock(&self.down_since)
    }

    /// Notes whether a request got an answer (a refusal is an answer).
    fn answered(&self, answered: bool) {
        let mut since = lock(&self.down_since);
        match (answered, since.is_some()) {
            (true, true) => {
                tracing::info!("SQS answers again");
                *since = None;
            }
            (false, false) => *since = Some(Instant::now()),
            _ => {}
        }
    }

    /// Notes a failed request's error: whether SQS answered it at all.
    fn failed<E, R>(&self, e: &aws_sdk_sqs::error::SdkError<E, R>) {
        use aws_sdk_sqs::error::SdkError;
        let answered = matches!(e, SdkError::ServiceError(_) | SdkError::ResponseError(_));
        self.answered(answered);
    }

    /// A queue's lanes: one per queue (when it was looked up).
    pub(crate) fn lanes_of(&self, topic: &str) -> Option<i32> {
        lock(&self.queues).get(topic).map(|_| 1)
    }

    /// The queue `name`, created when missing (standard, or FIFO for a `.fifo` name), with
    /// `dead_letters` as its dead-letter queue when given (created too).
    pub(crate) async fn queue(&self, name: &str, dead_letters: Option<&str>) -> Result<Queue> {
        if let Some(q) = lock(&self.queues).get(name) {
            return Ok(q.clone());
        }
        let _creating = self.creating.lock().await;
        if let Some(q) = lock(&self.queues).get(name) {
            return Ok(q.clone());
        }
        let queue = self
            .look_up_or_create(name, dead_letters)
            .await
            .map_err(|e| Error::config("topics (WEIR_TOPICS)", format!("queue {name}: {e}")))?;
        lock(&self.queues).insert(name.to_owned(), queue.clone());
        Ok(queue)
    }

    async fn look_up_or_create(
        &self,
        name: &str,
        dead_letters: Option<&str>,
    ) -> Result<Queue, String> {
        let found = self.client.get_queue_url().queue_name(name).send().await;
        let url = match found {
            Ok(found) => found.queue_url().unwrap_or_default().to_owned(),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_queue_does_not_exist()) =>
            {
                self.create(name, dead_letters).await?
            }
            Err(e) => {
                self.failed(&e);
                return Err(describe(&e));
            }
        };
        self.answered(true);
        self.attributes_of(url).await
    }

    /// Creates queue `name`; its URL.
    async fn create(&self, name: &str, dead_letters: Option<&str>) -> Result<String, String> {
        let fifo = name.ends_with(".fifo");
        let mut create = self.client.create_queue().queue_name(name);
        if fifo {
            create = create.attributes(QueueAttributeName::FifoQueue, "true");
        }
        if let Some(dlq) = dead_letters.filter(|d| *d != name) {
            // (Under `creating`, held by the caller.)
            let dlq_queue = Box::pin(self.look_up_or_create(dlq, None)).await?;
            lock(&self.queues).insert(dlq.to_owned(), dlq_queue.clone());
            let arn = self.arn_of(&dlq_queue.url).await?;
            let policy = serde_json::json!({
                "deadLetterTargetArn": arn,
                "maxReceiveCount": MAX_RECEIVE_COUNT.to_string(),
            });
            create = create.attributes(QueueAttributeName::RedrivePolicy, policy.to_string());
        }
        let created = create.send().await.map_err(|e| {
            self.failed(&e);
            describe(&e)
        })?;
        tracing::info!(queue = %name, ?dead_letters, "created the queue");
        Ok(created.queue_url().unwrap_or_default().to_owned())
    }

    async fn arn_of(&self, url: &str) -> Result<String, String> {
        let attributes = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        attributes
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| format!("{url} has no ARN"))
    }

    async fn attributes_of(&self, url: String) -> Result<Queue, String> {
        let read = self
            .client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let attributes = read.attributes().cloned().unwrap_or_default();
        let seconds = |name: QueueAttributeName, default: Duration| {
            attributes
                .get(&name)
                .and_then(|s| s.parse::<u64>().ok())
                .map_or(default, Duration::from_secs)
        };
        Ok(Queue {
            visibility: seconds(QueueAttributeName::VisibilityTimeout, DEFAULT_VISIBILITY),
            retention: seconds(
                QueueAttributeName::MessageRetentionPeriod,
                DEFAULT_RETENTION,
            ),
            fifo: attributes
                .get(&QueueAttributeName::FifoQueue)
                .is_some_and(|f| f == "true"),
            url,
        })
    }

    /// Creates the queues of `wanted` that are missing.
    pub(crate) async fn create_missing(&self, wanted: Vec<WantedTopic>) {
        for topic in wanted {
            if let Err(e) = self.queue(&topic.name, None).await {
                tracing::warn!(queue = %topic.name, kind = topic.kind, "{e}");
            }
        }
    }
}

/// The name a `{topic}` template gives on SQS, whose names allow no dots but a FIFO queue's
/// `.fifo` ending: dots become dashes, and a FIFO topic's queue is FIFO too
/// (`{topic}.dlq` of `orders.fifo` is `orders-dlq.fifo`).
pub fn queue_name(template: &str, topic: &str) -> String {
    let (base, fifo) = match topic.strip_suffix(".fifo") {
        Some(base) => (base, true),
        None => (topic, false),
    };
    let name = template.replace("{topic}", base).replace('.', "-");
    if fifo { format!("{name}.fifo") } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_give_sqs_names() {
        assert_eq!(queue_name("{topic}.dlq", "orders"), "orders-dlq");
        assert_eq!(queue_name("{topic}.dlq", "orders.fifo"), "orders-dlq.fifo");
        assert_eq!(queue_name("{topic}.late", "views"), "views-late");
        assert_eq!(queue_name("failed", "views"), "failed");
    }
}

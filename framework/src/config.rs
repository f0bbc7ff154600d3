//! Worker settings: builder values, overridden by `WEIR_*` environment variables.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::dead_letter::RetryPolicy;
use crate::handler::{Delivery, HandlerSettings};
use crate::{Error, Result};

/// Prefix of environment variables that set librdkafka properties:
/// `WEIR_KAFKA_SESSION_TIMEOUT_MS=6000` sets `session.timeout.ms`.
pub(crate) const KAFKA_ENV_PREFIX: &str = "WEIR_KAFKA_";

/// Dead letters of topic `t` go to `t.dlq` unless configured otherwise.
pub(crate) const DEFAULT_DEAD_LETTER_TOPIC: &str = "{topic}.dlq";

pub(crate) const GROUP: &str = "group";
pub(crate) const MAX_ATTEMPTS: &str = "max_attempts";
pub(crate) const BACKOFF: &str = "backoff";
pub(crate) const MAX_BACKOFF: &str = "max_backoff";
pub(crate) const DEAD_LETTER_TOPIC: &str = "dead_letter_topic";
pub(crate) const KEEP_KEY_ORDER: &str = "keep_key_order";
pub(crate) const TOPICS: &str = "topics";
pub(crate) const BATCH_SIZE: &str = "batch_size";
pub(crate) const LINGER: &str = "linger";
pub(crate) const QUEUE_CAPACITY: &str = "queue_capacity";

/// Every setting of a worker.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Bootstrap servers; `None` starts the embedded broker.
    pub(crate) brokers: Option<String>,
    pub(crate) group: String,
    /// Static group membership (`group.instance.id`): a restart within the session timeout
    /// gets the same partitions back without a rebalance.
    pub(crate) instance_id: Option<String>,
    pub(crate) topics: Vec<String>,
    pub(crate) state_dir: PathBuf,
    pub(crate) batch_size: usize,
    pub(crate) linger: Duration,
    pub(crate) queue_capacity: usize,
    pub(crate) embedded_partitions: i32,
    pub(crate) delivery: Delivery,
    pub(crate) retry: RetryPolicy,
    /// Dead-letter topic template (`{topic}` is the source topic); `None`: no dead letters.
    pub(crate) dead_letter_topic: Option<String>,
    pub(crate) keep_key_order: bool,
    /// Log every state change to a changelog topic per input topic, and restore a partition's
    /// store from it when the local copy is missing or behind.
    pub(crate) changelog: bool,
    /// Address of the `/metrics` and `/health/*` endpoint; `None` serves none.
    pub(crate) metrics_addr: Option<String>,
    /// How often the progress line is logged; zero logs none.
    pub(crate) progress_interval: Duration,
    /// How long a graceful stop may take before the worker gives up with an error.
    pub(crate) drain_timeout: Duration,
    /// How long the worker waits at start for a broker to answer.
    pub(crate) startup_timeout: Duration,
    /// librdkafka properties with where each came from (for error messages).
    pub(crate) kafka: Vec<KafkaProperty>,
    /// Settings given by the builder or the environment, which a handler's own don't override.
    pub(crate) explicit: BTreeSet<&'static str>,
}

#[derive(Debug, Clone)]
pub(crate) struct KafkaProperty {
    pub(crate) name: String,
    pub(crate) value: String,
    /// The builder call or environment variable that set it.
    pub(crate) origin: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            brokers: None,
            group: "weir".into(),
            instance_id: None,
            changelog: false,
            topics: Vec::new(),
            state_dir: PathBuf::from("weir-state"),
            batch_size: 5000,
            linger: Duration::from_millis(5),
            queue_capacity: 10_000,
            embedded_partitions: 4,
            delivery: Delivery::AtLeastOnce,
            retry: RetryPolicy::default(),
            dead_letter_topic: Some(DEFAULT_DEAD_LETTER_TOPIC.to_owned()),
            keep_key_order: false,
            metrics_addr: None,
            progress_interval: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(30),
            kafka: Vec::new(),
            explicit: BTreeSet::new(),
        }
    }
}

impl Config {
    /// Overrides settings from the environment variables in `vars`.
    pub(crate) fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<()> {
        for (name, value) in vars {
            match name.as_str() {
                "WEIR_BROKERS" => {
                    self.brokers = (!value.trim().is_empty()).then(|| value.trim().to_owned())
                }
                "WEIR_GROUP" => {
                    self.group = value;
                    self.explicit.insert(GROUP);
                }
                "WEIR_TOPICS" => {
                    self.topics = value
                        .split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                        .collect();
                    self.explicit.insert(TOPICS);
                }
                "WEIR_STATE_DIR" => self.state_dir = PathBuf::from(value),
                "WEIR_CHANGELOG" => self.changelog = parse(&name, &value)?,
                "WEIR_INSTANCE_ID" => {
                    self.instance_id = (!value.trim().is_empty()).then(|| value.trim().to_owned())
                }
                "WEIR_BATCH_SIZE" => {
                    self.batch_size = parse(&name, &value)?;
                    self.explicit.insert(BATCH_SIZE);
                }
                "WEIR_LINGER_MS" => {
                    self.linger = Duration::from_millis(parse(&name, &value)?);
                    self.explicit.insert(LINGER);
                }
                "WEIR_QUEUE_CAPACITY" => {
                    self.queue_capacity = parse(&name, &value)?;
                    self.explicit.insert(QUEUE_CAPACITY);
                }
                "WEIR_RETRY_MAX_ATTEMPTS" => {
                    self.retry.max_attempts = parse(&name, &value)?;
                    self.explicit.insert(MAX_ATTEMPTS);
                }
                "WEIR_RETRY_BACKOFF_MS" => {
                    self.retry.backoff = Duration::from_millis(parse(&name, &value)?);
                    self.explicit.insert(BACKOFF);
                }
                "WEIR_RETRY_MAX_BACKOFF_MS" => {
                    self.retry.max_backoff = Duration::from_millis(parse(&name, &value)?);
                    self.explicit.insert(MAX_BACKOFF);
                }
                "WEIR_DEAD_LETTER_TOPIC" => {
                    self.dead_letter_topic =
                        (!value.trim().is_empty()).then(|| value.trim().to_owned());
                    self.explicit.insert(DEAD_LETTER_TOPIC);
                }
                "WEIR_DEAD_LETTER_KEEP_KEY_ORDER" => {
                    self.keep_key_order = parse(&name, &value)?;
                    self.explicit.insert(KEEP_KEY_ORDER);
                }
                "WEIR_METRICS_ADDR" => {
                    self.metrics_addr = (!value.trim().is_empty()).then(|| value.trim().to_owned())
                }
                "WEIR_PROGRESS_INTERVAL_MS" => {
                    self.progress_interval = Duration::from_millis(parse(&name, &value)?)
                }
                "WEIR_STARTUP_TIMEOUT_MS" => {
                    self.startup_timeout = Duration::from_millis(parse(&name, &value)?)
                }
                "WEIR_DRAIN_TIMEOUT_MS" => {
                    self.drain_timeout = Duration::from_millis(parse(&name, &value)?)
                }
                "WEIR_EMBEDDED_PARTITIONS" => self.embedded_partitions = parse(&name, &value)?,
                _ => {
                    if let Some(prop) = name.strip_prefix(KAFKA_ENV_PREFIX) {
                        let prop = prop.to_ascii_lowercase().replace('_', ".");
                        self.set_kafka(prop, value, name.clone());
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes the handler's declared settings where the builder and environment gave none.
    pub(crate) fn apply_handler(&mut self, h: &HandlerSettings) {
        if !self.explicit.contains(TOPICS) && self.topics.is_empty() {
            self.topics = h.topics.iter().map(|t| t.to_string()).collect();
        }
        if let (Some(g), false) = (h.group, self.explicit.contains(GROUP)) {
            self.group = g.to_owned();
        }
        if let (Some(n), false) = (h.batch_size, self.explicit.contains(BATCH_SIZE)) {
            self.batch_size = n;
        }
        if let (Some(ms), false) = (h.linger_ms, self.explicit.contains(LINGER)) {
            self.linger = Duration::from_millis(ms);
        }
        if let (Some(n), false) = (h.queue_capacity, self.explicit.contains(QUEUE_CAPACITY)) {
            self.queue_capacity = n;
        }
        self.delivery = h.delivery;
        if let (Some(n), false) = (h.max_attempts, self.explicit.contains(MAX_ATTEMPTS)) {
            self.retry.max_attempts = n;
        }
        if let (Some(ms), false) = (h.backoff_ms, self.explicit.contains(BACKOFF)) {
            self.retry.backoff = Duration::from_millis(ms);
        }
        if let (Some(ms), false) = (h.max_backoff_ms, self.explicit.contains(MAX_BACKOFF)) {
            self.retry.max_backoff = Duration::from_millis(ms);
        }
        if let (Some(t), false) = (
            h.dead_letter_topic,
            self.explicit.contains(DEAD_LETTER_TOPIC),
        ) {
            self.dead_letter_topic = (!t.is_empty()).then(|| t.to_owned());
        }
        if let (Some(k), false) = (h.keep_key_order, self.explicit.contains(KEEP_KEY_ORDER)) {
            self.keep_key_order = k;
        }
    }

    /// The changelog topic of the stores of source `topic`'s partitions, if the changelog is on:
    /// `<group>-<topic>-changelog`, partition for partition.
    pub(crate) fn changelog_topic_of(&self, topic: &str) -> Option<String> {
        self.changelog
            .then(|| format!("{}-{topic}-changelog", self.group))
    }

    /// The dead-letter topic of source `topic`, if dead letters are on.
    pub(crate) fn dead_letter_topic_of(&self, topic: &str) -> Option<String> {
        self.dead_letter_topic
            .as_ref()
            .map(|t| t.replace("{topic}", topic))
    }

    pub(crate) fn set_kafka(&mut self, name: String, value: String, origin: String) {
        self.kafka.retain(|p| p.name != name);
        self.kafka.push(KafkaProperty {
            name,
            value,
            origin,
        });
    }

    /// Checks every setting; the error names the first invalid one.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.group.trim().is_empty() {
            return Err(Error::config("group (WEIR_GROUP)", "must not be empty"));
        }
        if self.topics.is_empty() {
            return Err(Error::config(
                "topics (WEIR_TOPICS)",
                "no topic to consume; call .topic(\"name\") or set WEIR_TOPICS",
            ));
        }
        for topic in &self.topics {
            validate_topic_name(topic)
                .map_err(|m| Error::config("topics (WEIR_TOPICS)", format!("{topic:?}: {m}")))?;
        }
        if self.batch_size == 0 {
            return Err(Error::config(
                "batch_size (WEIR_BATCH_SIZE)",
                "must be at least 1",
            ));
        }
        if self.queue_capacity < 2 {
            return Err(Error::config(
                "queue_capacity (WEIR_QUEUE_CAPACITY)",
                "must be at least 2",
            ));
        }
        if !(1..=10_000).contains(&self.embedded_partitions) {
            return Err(Error::config(
                "embedded_partitions (WEIR_EMBEDDED_PARTITIONS)",
                "must be between 1 and 10000",
            ));
        }
        if self.keep_key_order && self.dead_letter_topic.is_none() {
            return Err(Error::config(
                "keep_key_order (WEIR_DEAD_LETTER_KEEP_KEY_ORDER)",
                "needs a dead-letter topic",
            ));
        }
        for topic in &self.topics {
            if let Some(dl) = self.dead_letter_topic_of(topic) {
                validate_topic_name(&dl).map_err(|m| {
                    Error::config(
                        "dead_letter_topic (WEIR_DEAD_LETTER_TOPIC)",
                        format!("{dl:?}: {m}"),
                    )
                })?;
                if self.topics.contains(&dl) {
                    return Err(Error::config(
                        "dead_letter_topic (WEIR_DEAD_LETTER_TOPIC)",
                        format!("{dl:?} is also consumed: dead letters would be processed again"),
                    ));
                }
            }
        }
        for p in &self.kafka {
            if matches!(
                p.name.as_str(),
                "enable.auto.commit" | "group.id" | "bootstrap.servers"
            ) {
                return Err(Error::config(
                    &p.origin,
                    format!(
                        "`{}` is managed by weir; use the worker's own setting",
                        p.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn parse<T: std::str::FromStr>(name: &str, value: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    value
        .trim()
        .parse()
        .map_err(|e| Error::config(name, format!("{value:?} is not valid: {e}")))
}

/// Kafka's rules for topic names: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub(crate) fn validate_topic_name(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > 249 {
        return Err("a topic name has 1 to 249 characters".into());
    }
    if topic == "." || topic == ".." {
        return Err("a topic cannot be named \".\" or \"..\"".into());
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{c:?} is not allowed; use letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_overrides_and_kafka_properties() {
        let mut c = Config::default();
        c.apply_env(env(&[
            ("WEIR_BROKERS", "127.0.0.1:9092"),
            ("WEIR_GROUP", "g1"),
            ("WEIR_INSTANCE_ID", "worker-a"),
            ("WEIR_TOPICS", "a, b"),
            ("WEIR_BATCH_SIZE", "50"),
            ("WEIR_KAFKA_SESSION_TIMEOUT_MS", "6000"),
            ("PATH", "/bin"),
        ]))
        .expect("valid");
        assert_eq!(c.brokers.as_deref(), Some("127.0.0.1:9092"));
        assert_eq!(c.group, "g1");
        assert_eq!(c.topics, ["a", "b"]);
        assert_eq!(c.batch_size, 50);
        assert_eq!(c.kafka.len(), 1);
        assert_eq!(c.kafka[0].name, "session.timeout.ms");
        assert_eq!(c.kafka[0].origin, "WEIR_KAFKA_SESSION_TIMEOUT_MS");
        assert_eq!(c.instance_id.as_deref(), Some("worker-a"));
        c.validate().expect("valid");
    }

    #[test]
    fn handler_settings_fill_only_what_was_not_given() {
        let mut c = Config::default();
        c.apply_env(env(&[("WEIR_BATCH_SIZE", "7")]))
            .expect("valid");
        c.apply_handler(&HandlerSettings {
            topics: &["orders"],
            group: Some("totals"),
            batch_size: Some(100),
            linger_ms: Some(50),
            ..HandlerSettings::DEFAULT
        });
        assert_eq!(c.topics, ["orders"]);
        assert_eq!(c.group, "totals");
        assert_eq!(c.batch_size, 7, "the environment wins over the handler");
        assert_eq!(c.linger, Duration::from_millis(50));
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = Config::default()
            .apply_env(env(&[("WEIR_BATCH_SIZE", "many")]))
            .expect_err("invalid");
        assert!(err.to_string().contains("WEIR_BATCH_SIZE"), "{err}");

        let c = Config {
            topics: vec!["orders/eu".into()],
            ..Config::default()
        };
        let err = c.validate().expect_err("invalid topic");
        assert!(
            err.to_string().contains("WEIR_TOPICS") && err.to_string().contains("'/'"),
            "{err}"
        );

        let mut c = Config {
            topics: vec!["t".into()],
            ..Config::default()
        };
        c.set_kafka(
            "enable.auto.commit".into(),
            "true".into(),
            "WEIR_KAFKA_ENABLE_AUTO_COMMIT".into(),
        );
        let err = c.validate().expect_err("managed property");
        assert!(
            err.to_string().contains("WEIR_KAFKA_ENABLE_AUTO_COMMIT"),
            "{err}"
        );
    }
}

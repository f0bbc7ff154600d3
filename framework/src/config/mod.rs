//! Worker settings: builder values, overridden by `WEIR_*` environment variables, filled in
//! from the handler's declaration. Each setting is declared once, in [`SETTINGS`]: its name,
//! environment variable, default and how a value is read.

mod settings;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::delivery::{DeadLetterPolicy, RetryPolicy};
use crate::error::{Error, Result};
use crate::processing::batch::Policy;
use crate::processing::{Delivery, HandlerSettings, TableInfo};

pub(crate) use settings::SETTINGS;

/// Prefix of environment variables that set librdkafka properties:
/// `WEIR_KAFKA_SESSION_TIMEOUT_MS=6000` sets `session.timeout.ms`.
pub(crate) const KAFKA_ENV_PREFIX: &str = "WEIR_KAFKA_";

/// Dead letters of topic `t` go to `t.dlq` unless configured otherwise.
pub(crate) const DEFAULT_DEAD_LETTER_TOPIC: &str = "{topic}.dlq";

/// Late records of topic `t` go to `t.late` unless configured otherwise.
pub(crate) const DEFAULT_LATE_TOPIC: &str = "{topic}.late";

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
    /// MiB a partition's queue holds at most (records' keys, payloads and headers).
    pub(crate) queue_capacity_mb: usize,
    /// MiB of committed state values the worker's partitions keep in memory together.
    pub(crate) state_cache_mb: usize,
    pub(crate) embedded_partitions: i32,
    /// Lanes of a stream weir creates on NATS.
    pub(crate) partitions: i32,
    /// An NKey/JWT credentials file for NATS.
    pub(crate) nats_creds: Option<PathBuf>,
    /// Receives in flight per SQS queue.
    pub(crate) sqs_receives: usize,
    /// RabbitMQ: the ready messages a lane queue holds at most (declared by weir with it, or
    /// declared so by the user): the lanes' fill is watched against it.
    pub(crate) queue_max_length: Option<u32>,
    /// How long NATS keeps a lane with a worker that stopped pulling (and its unacknowledged
    /// messages from the next owner).
    pub(crate) hand_off: Duration,
    pub(crate) delivery: Delivery,
    pub(crate) retry: RetryPolicy,
    /// Dead-letter topic template (`{topic}` is the source topic); `None`: no dead letters.
    pub(crate) dead_letter_topic: Option<String>,
    pub(crate) keep_key_order: bool,
    /// The top-level field of JSON record values holding the event time (ms since the epoch),
    /// over the handler's own event time.
    pub(crate) event_time_field: Option<String>,
    pub(crate) event_time_max_ahead: Duration,
    /// Late-record topic template (`{topic}` is the source topic); `None`: late records are
    /// dropped (still counted and logged).
    pub(crate) late_topic: Option<String>,
    /// After this long without records a partition's watermark follows the wall clock;
    /// `None`: never.
    pub(crate) idle_close_after: Option<Duration>,
    /// The handler declares window stores (its late topic is created at start).
    pub(crate) windows: bool,
    /// The handler wants `on_window_updated` after every window update.
    pub(crate) window_updates: bool,
    /// The handler's tables.
    pub(crate) tables: Vec<TableInfo>,
    /// The group of the pipeline this worker runs a stage of (`None`: not a pipeline's).
    pub(crate) pipeline: Option<String>,
    /// Table topics set by the builder over the declared ones, by table name.
    pub(crate) table_topics: std::collections::BTreeMap<String, String>,
    /// Log every state change to a changelog topic per input topic, and restore a partition's
    /// store from it when the local copy is missing or behind.
    pub(crate) changelog: bool,
    /// Address of the `/metrics` and `/health/*` endpoint; `None` serves none.
    pub(crate) metrics_addr: Option<String>,
    /// The bearer token of the endpoint's `/state/...` queries; `None`: they are off.
    pub(crate) http_token: Option<Secret>,
    /// How the producers of the input topics partition keys (which partition holds a key).
    pub(crate) key_partitioner: KeyPartitioner,
    /// How often the progress line is logged; zero logs none.
    pub(crate) progress_interval: Duration,
    /// How long a graceful stop may take before the worker gives up with an error.
    pub(crate) drain_timeout: Duration,
    /// How long the worker waits at start for a broker to answer.
    pub(crate) startup_timeout: Duration,
    /// Take a partition with no stored state whose earliest records were deleted.
    pub(crate) allow_partial_history: bool,
    /// How long records may wait on a partition, none arriving, before it is reported
    /// unreadable.
    pub(crate) unreadable_after: Duration,
    /// librdkafka properties with where each came from (for error messages).
    pub(crate) kafka: Vec<KafkaProperty>,
    /// Settings given by the builder or the environment, which a handler's own don't override.
    pub(crate) explicit: BTreeSet<&'static str>,
}

/// A secret setting: shown as `***` by `Debug`, so that it stays out of logs.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(pub(crate) String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// How the producers of a worker's input topics chose a key's partition; `/state/...` queries
/// find a key's partition store with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyPartitioner {
    #[default]
    /// Kafka's Java client (and weir's own outputs): murmur2 of the key.
    Murmur2,
    /// librdkafka's default (`consistent_random`): CRC-32 of the key.
    Crc32,
}

impl KeyPartitioner {
    /// The partition of `key` among `partitions`.
    pub(crate) fn partition(self, key: &[u8], partitions: i32) -> i32 {
        match self {
            Self::Murmur2 => weir_state::wire::partition_for_key(key, partitions),
            Self::Crc32 => (weir_state::wire::crc32(key) % partitions.max(1) as u32) as i32,
        }
    }
}

/// A table as the worker reads it: its store name and topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableSource {
    pub(crate) name: &'static str,
    pub(crate) topic: String,
}

/// librdkafka's default `message.max.bytes`: the largest record its producer sends.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

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
            batch_size: 10_000,
            linger: Duration::from_millis(5),
            queue_capacity: 40_000,
            queue_capacity_mb: 16,
            state_cache_mb: 256,
            embedded_partitions: 4,
            partitions: 4,
            sqs_receives: 4,
            queue_max_length: None,
            nats_creds: None,
            hand_off: Duration::from_secs(10),
            delivery: Delivery::AtLeastOnce,
            retry: RetryPolicy::default(),
            dead_letter_topic: Some(DEFAULT_DEAD_LETTER_TOPIC.to_owned()),
            keep_key_order: false,
            event_time_field: None,
            event_time_max_ahead: Duration::from_secs(24 * 3600),
            late_topic: Some(DEFAULT_LATE_TOPIC.to_owned()),
            idle_close_after: None,
            windows: false,
            window_updates: false,
            tables: Vec::new(),
            table_topics: Default::default(),
            pipeline: None,
            metrics_addr: None,
            http_token: None,
            key_partitioner: KeyPartitioner::Murmur2,
            progress_interval: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(30),
            allow_partial_history: false,
            unreadable_after: Duration::from_secs(60),
            kafka: Vec::new(),
            explicit: BTreeSet::new(),
        }
    }
}

impl Config {
    /// Overrides settings from the environment variables in `vars`. A `WEIR_*` variable that
    /// is no setting is an error naming it and the closest setting.
    pub(crate) fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<()> {
        for (name, value) in vars {
            if let Some(prop) = name.strip_prefix(KAFKA_ENV_PREFIX) {
                let prop = prop.to_ascii_lowercase().replace('_', ".");
                self.set_kafka(prop, value, name.clone());
                continue;
            }
            if !name.starts_with("WEIR_") {
                continue;
            }
            let Some(setting) = SETTINGS.iter().find(|s| s.env == name) else {
                return Err(Error::config(
                    &name,
                    format!(
                        "no such setting{}; librdkafka properties are WEIR_KAFKA_<PROPERTY>",
                        settings::closest(&name)
                            .map(|s| format!(" (did you mean {}?)", s.env))
                            .unwrap_or_default()
                    ),
                ));
            };
            (setting.apply)(self, value.trim())
                .map_err(|m| Error::config(&name, format!("{value:?} is not valid: {m}")))?;
            self.explicit.insert(setting.name);
        }
        Ok(())
    }

    /// Marks `name` (a [`SETTINGS`] name) as given by the builder or the environment: the
    /// handler's declaration no longer overrides it.
    pub(crate) fn given(&mut self, name: &'static str) {
        debug_assert!(SETTINGS.iter().any(|s| s.name == name), "{name}");
        self.explicit.insert(name);
    }

    /// Takes the handler's declared settings where the builder and environment gave none.
    pub(crate) fn apply_handler(&mut self, h: &HandlerSettings) {
        self.delivery = h.delivery;
        self.windows = !h.windows.is_empty();
        self.window_updates = h.window_updates;
        self.tables = h.tables.to_vec();
        for s in SETTINGS {
            if let (Some(from_handler), false) = (s.from_handler, self.explicit.contains(s.name)) {
                from_handler(self, h);
            }
        }
    }

    /// How the batches of `topic`'s partitions are run.
    pub(crate) fn policy_for(&self, topic: &str) -> Policy {
        Policy {
            delivery: self.delivery,
            changelog: self.changelog_topic_of(topic),
            retry: self.retry,
            dead_letter: self.dead_letter_topic_of(topic).map(|t| DeadLetterPolicy {
                topic: t,
                keep_key_order: self.keep_key_order,
            }),
            late_topic: self.late_topic_of(topic),
            window_updates: self.window_updates,
            event_time_field: self.event_time_field.as_deref().map(std::sync::Arc::from),
            event_time_max_ahead_ms: i64::try_from(self.event_time_max_ahead.as_millis())
                .unwrap_or(i64::MAX),
            max_emit_bytes: self
                .kafka
                .iter()
                .rev()
                .find(|p| p.name == "message.max.bytes")
                .and_then(|p| p.value.trim().parse().ok())
                .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES),
        }
    }

    /// The group naming repartition topics: the pipeline's, or the worker's own.
    pub(crate) fn pipeline_group(&self) -> &str {
        self.pipeline.as_deref().unwrap_or(&self.group)
    }

    /// The tables, global (`true`) or kept in each partition's store (`false`), with their
    /// topics.
    pub(crate) fn tables(&self, global: bool) -> Vec<TableSource> {
        self.tables
            .iter()
            .filter(|t| t.global == global)
            .map(|t| TableSource {
                name: t.name,
                topic: self
                    .table_topics
                    .get(t.name)
                    .cloned()
                    .unwrap_or_else(|| t.topic.to_owned()),
            })
            .collect()
    }

    /// The late-record topic of source `topic`, if late records are sent anywhere.
    pub(crate) fn late_topic_of(&self, topic: &str) -> Option<String> {
        self.late_topic.as_ref().map(|t| self.topic_named(t, topic))
    }

    /// The topic template `template` names for source `topic` (on SQS, whose names allow no
    /// dots, with dashes: `{topic}.dlq` is `{topic}-dlq`).
    fn topic_named(&self, template: &str, topic: &str) -> String {
        #[cfg(feature = "sqs")]
        if self.brokers.as_deref().is_some_and(crate::broker::sqs_url) {
            return crate::broker::sqs::queue_name(template, topic);
        }
        template.replace("{topic}", topic)
    }

    /// The changelog topic of the stores of source `topic`'s partitions, if the changelog is on:
    /// `<group>-<topic>-changelog`, partition for partition.
    pub(crate) fn changelog_topic_of(&self, topic: &str) -> Option<String> {
        self.changelog
            .then(|| weir_state::wire::changelog_topic(&self.group, topic))
    }

    /// The dead-letter topic of source `topic`, if dead letters are on.
    pub(crate) fn dead_letter_topic_of(&self, topic: &str) -> Option<String> {
        self.dead_letter_topic
            .as_ref()
            .map(|t| self.topic_named(t, topic))
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
        let invalid = |name: &str, message: String| Error::config(settings::label(name), message);
        for s in SETTINGS {
            if let Some(check) = s.check {
                check(self).map_err(|m| invalid(s.name, m))?;
            }
        }
        // Topics a worker writes its input's records to: valid names, not consumed again.
        let outputs = [
            (
                "dead_letter_topic",
                "dead letters",
                Self::dead_letter_topic_of as fn(&Self, &str) -> Option<String>,
            ),
            ("late_topic", "late records", Self::late_topic_of),
        ];
        for topic in &self.topics {
            for (setting, what, of) in outputs {
                let Some(out) = of(self, topic) else { continue };
                validate_topic_name(&out).map_err(|m| invalid(setting, format!("{out:?}: {m}")))?;
                if self.topics.contains(&out) {
                    return Err(invalid(
                        setting,
                        format!("{out:?} is also consumed: {what} would be processed again"),
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
    fn an_empty_dead_letter_topic_turns_dead_letters_off() {
        let mut c = Config::default();
        assert!(c.dead_letter_topic.is_some());
        c.apply_env(env(&[("WEIR_DEAD_LETTER_TOPIC", "")]))
            .expect("valid");
        assert_eq!(c.dead_letter_topic, None);
        assert_eq!(c.dead_letter_topic_of("t"), None);
    }

    #[test]
    fn late_topics_follow_their_source_and_are_never_consumed_again() {
        let mut c = Config {
            topics: vec!["views".into(), "views.late".into()],
            ..Config::default()
        };
        assert_eq!(c.late_topic_of("views").as_deref(), Some("views.late"));
        let err = c.validate().expect_err("the late topic is also an input");
        assert!(
            err.to_string().contains("late_topic (WEIR_LATE_TOPIC)")
                && err
                    .to_string()
                    .contains("late records would be processed again"),
            "{err}"
        );
        c.apply_env(env(&[
            ("WEIR_LATE_TOPIC", ""),
            ("WEIR_IDLE_CLOSE_AFTER_MS", "1500"),
        ]))
        .expect("valid");
        assert_eq!(c.late_topic_of("views"), None);
        assert_eq!(c.idle_close_after, Some(Duration::from_millis(1500)));
        c.validate()
            .expect("late records dropped: nothing to check");
        let err = Config::default()
            .apply_env(env(&[("WEIR_IDLE_CLOSE_AFTER_MS", "soon")]))
            .expect_err("not a number");
        assert!(
            err.to_string().contains("WEIR_IDLE_CLOSE_AFTER_MS"),
            "{err}"
        );
    }

    #[test]
    fn unknown_weir_variables_are_refused_with_the_closest_name() {
        let err = Config::default()
            .apply_env(env(&[("WEIR_BATCHSIZE", "10")]))
            .expect_err("unknown");
        let text = err.to_string();
        assert!(
            text.contains("WEIR_BATCHSIZE") && text.contains("did you mean WEIR_BATCH_SIZE"),
            "{text}"
        );
        Config::default()
            .apply_env(env(&[("WEIRD_THING", "1"), ("HOME", "/root")]))
            .expect("other variables are not weir's");
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

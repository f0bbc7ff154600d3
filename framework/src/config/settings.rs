//! Every worker setting, declared once: builder name, environment variable, documented
//! default, how an environment value is read, what a handler may declare, and the check.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, KeyPartitioner, Secret, validate_topic_name};
use crate::processing::HandlerSettings;

/// A check of a setting's final value; the error says what is wrong.
type Check = fn(&Config) -> Result<(), String>;

/// One setting. The builder method of the same `name` sets the field and calls
/// [`Config::given`](super::Config::given).
#[derive(Clone, Copy)]
pub(crate) struct Setting {
    /// The builder method (and the name errors use).
    pub(crate) name: &'static str,
    /// The environment variable.
    pub(crate) env: &'static str,
    /// The default, as the README's table says it (a test holds the two together).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) default: &'static str,
    /// Sets the field from an environment value (trimmed); the error says why it is invalid.
    pub(crate) apply: fn(&mut Config, &str) -> Result<(), String>,
    /// Takes the handler's declaration, where the builder and the environment said nothing.
    pub(crate) from_handler: Option<fn(&mut Config, &HandlerSettings)>,
    /// Checks the final value.
    pub(crate) check: Option<Check>,
}

impl std::fmt::Debug for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setting")
            .field("name", &self.name)
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

fn num<T: std::str::FromStr>(v: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e: T::Err| e.to_string())
}

fn millis(v: &str) -> Result<Duration, String> {
    num(v).map(Duration::from_millis)
}

fn flag(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// `None` for an empty value.
fn optional(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_owned())
}

/// The settings, in the README's order.
pub(crate) const SETTINGS: &[Setting] = &[
    Setting {
        name: "brokers",
        env: "WEIR_BROKERS",
        default: "unset: embedded broker",
        apply: |c, v| {
            c.brokers = optional(v);
            Ok(())
        },
        from_handler: None,
        check: None,
    },
    Setting {
        name: "group",
        env: "WEIR_GROUP",
        default: "`weir`",
        apply: |c, v| {
            c.group = v.to_owned();
            Ok(())
        },
        from_handler: Some(|c, h| {
            if let Some(g) = h.group {
                c.group = g.to_owned();
            }
        }),
        check: Some(|c| match c.group.trim().is_empty() {
            true => Err("must not be empty".into()),
            false => Ok(()),
        }),
    },
    Setting {
        name: "instance_id",
        env: "WEIR_INSTANCE_ID",
        default: "unset: dynamic membership",
        apply: |c, v| {
            c.instance_id = optional(v);
            Ok(())
        },
        from_handler: None,
        check: None,
    },
    Setting {
        name: "topics",
        env: "WEIR_TOPICS",
        default: "none (required)",
        apply: |c, v| {
            c.topics = v
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
            Ok(())
        },
        from_handler: Some(|c, h| {
            if c.topics.is_empty() {
                c.topics = h.topics.iter().map(|t| t.to_string()).collect();
            }
        }),
        check: Some(|c| {
            if c.topics.is_empty() {
                return Err("no topic to consume; call .topic(\"name\") or set WEIR_TOPICS".into());
            }
            for topic in &c.topics {
                validate_topic_name(topic).map_err(|m| format!("{topic:?}: {m}"))?;
            }
            Ok(())
        }),
    },
    Setting {
        name: "state_dir",
        env: "WEIR_STATE_DIR",
        default: "`weir-state`",
        apply: |c, v| {
            c.state_dir = PathBuf::from(v);
            Ok(())
        },
        from_handler: None,
        check: None,
    },
    Setting {
        name: "batch_size",
        env: "WEIR_BATCH_SIZE",
        default: "10000 records per transaction",
        apply: |c, v| {
            c.batch_size = num(v)?;
            Ok(())
        },
        from_handler: Some(|c, h| {
            if let Some(n) = h.batch_size {
                c.batch_size = n;
            }
        }),
        check: Some(|c| match c.batch_size {
            0 => Err("must be at least 1".into()),
            _ => Ok(()),
        }),
    },
    Setting {
        name: "linger",
        env: "WEIR_LINGER_MS",
        default: "5 ms",
        apply: |c, v| {
            c.linger = millis(v)?;
            Ok(())
        },
        from_handler: Some(|c, h| {
            if let Some(ms) = h.linger_ms {
                c.linger = Duration::from_millis(ms);
            }
        }),
        check: None,
    },
    Setting {
        name: "queue_capacity",
        env: "WEIR_QUEUE_CAPACITY",
        default: "40000 records per partition",
        apply: |c, v| {
            c.queue_capacity = num(v)?;
            Ok(())
        },
        from_handler: Some(|c, h| {
            if let Some(n) = h.queue_capacity {
                c.queue_capacity = n;
            }
        }),
        check: Some(|c| match c.queue_capacity < 2 {
            true => Err("must be at least 2".into()),
            false => Ok(()),
        }),
    },
    Setting {
        name: "queue_capacity_mb",
        env: "WEIR_QUEUE_CAPACITY_MB",
        default: "16 MiB per partition",
        apply: |c, v| {
            c.queue_capacity_mb = num(v)?;
            Ok(())
        },
        from_handler: None,
        check: Some(|c| match c.queue_capacity_mb {
            0 => Err("must be at least 1".into()),
            n if n > 1 << 20 => Err("must be at most 1048576 (1 TiB)".into()),
            _ => Ok(()),
        }),
    },
    Setting {
        name: "state_cache_mb",
        env: "WEIR_STATE_CACHE_MB",
        default: "256 MiB per worker (0: off)",
        apply: |c, v| {
            c.state_cache_mb = num(v)?;
            Ok(())
        },
        from_handler: None,
        check: Some(|c| match c.state_cache_mb > 1 << 20 {
            true => Err("must be at most 1048576 (1 TiB)".into()),
            false => Ok(()),
        }),
    },
    Setting {
        name: "embedded_partitions",
        env: "WEIR_EMBEDDED_PARTITIONS",
        default: "4",
        apply: |c, v| {
            c.embedded_partitions = num(v)?;
            Ok(())
        },
        from_handler: None,
        check: Some(|c| match (1..=10_000).contains(&c.embedded_partitions) {
            true => Ok(()),
            false => Err("must be between 1 and 10000".into()),
        }),
    },
    Setting {
        name: "partitions",
        env: "WEIR_PARTITIONS",
        default: "4 (NATS, RabbitMQ: lanes of a stream or exchange weir creates)",
        apply: |c, v| {
            c.partitions = num(v)?;
            Ok(())
        },
        from_handler: None,
        check: Some(|c| match (1..=1_000).contains(&c.partitions) {
            true => Ok(()),
            false => Err("must be between 1 and 1000".into()),
        }),
    },
    Setting {
        name: "sqs_receives",
        env: "WEIR_SQS_RECEIVES",
        default: "4 (SQS: long-polling receives in flight per queue, 10 messages each)",
        apply: |c, v| {
            c.sqs_receives = num(v)?;
            Ok(())
        },
        from_handler: None,
        check: Some(|c| match (1..=64).contains(&c.sqs_receives) {
            true => Ok(()),
            false => Err("must be between 1 and 64".into()),
        }),
    },
    Setting {
        name: "queue_max_length",
        env: "WEIR_QUEUE_MAX_LENGTH",
        default: "unset (RabbitMQ: no limit on a lane queue weir declares)",
        apply: |c, v| {
            c.queue_max_length = Some(num(v)?);
            Ok(())
        },
        from_handler: None,
        check: Some(|c| match c.queue_max_length {
            Some(0) => Err("must be at least 1".into()),
            _ => Ok(()),
        }),
    },
    Setting {
        name: "nats_creds",
        env: "WEIR_NATS_CREDS",
        default: "unset: credentials in the URL, or none",
        apply: |c, v| {
            c.nats_creds = optional(v).map(PathBuf::from);
            Ok(())
        },
        from_handler: None,
        check: None,
    },
    Setting {
        name: "hand_off",
        env: "WEIR_HAND_OFF_MS",
        default: "10 s (NATS: a dead worker's lanes move after it)",
        apply: |c, v| {
            c.hand_off = millis(v)?;
            Ok(())
        },
        from_handler: None,
        check: Some(|c| match c.hand_off >= Duration::from_secs(1) {
            true => Ok(()),
            false => Err("must be at least 1000 ms".into()),
        }),
    },
    Setting {
        name: "metrics_addr",
        env: "WEIR_METRICS_ADDR",
        default: "unset: no endpoint",
        apply: |c, v| {
            c.metrics_addr = optional(v);
            Ok(())
        },
        from_handler: None,
        check: None,
    },
    Setting {
        name: "http_token",
        env: "WEIR_HTTP_TOKEN",
        default: "unset: `/state/...` is off",
        apply: |c, v| {
            c.http_token = optional(v).map(Secret);
            Ok(())
        },
        from_handler: None,
        check: Some(|c| match &c.http_token {
            Some(t) if t.0.len() < 16 => Err("use a token of at least 16 characters".into()),
            _ => Ok(()),
        }),
    },
    Setting {
        name: "key_partitioner",
        env: "WEIR_KEY_PARTITIONER",
        default: "`murmur2` (Kafka's Java client; `crc32`: librdkafka's default)",
        apply: |c, v| {
            c.key_partitioner = match v {
                "murmur2" => KeyPartitioner::Murmur2,
                "crc32" => KeyPartitioner::Crc32,
                _ => return Err("expected murmur2 or crc32".into()),
            };
            Ok(())
        },
        from_handler: None,
        check: None,
    },
    Setting {
        name: "progress_interval",
        env: "WEIR_PROGRESS_INTERVAL_MS",
        default: "10 s (0: off)",
        apply: |c, v| {
            c.progress_interval = millis(v)?;
            Ok(())
        },
        from_handler: None,
        check: None,
    },
    Setting {
        name: "drain_timeout",
        env: "WEIR_DRAIN_TIMEOUT_MS",
        default: "30 s",
        apply: |c, v| {
            c.drain_timeout = millis(v)?;
            Ok(())
        },
        from_handler: None,
        check: None,
    },
    Setting {
        name: "startup_timeout",
        env: "WEIR_STARTUP_TIMEOUT_MS",
        default: "30 s",
        apply: |c, v| {
            c.startup_timeout = millis(v)?;
            Ok(())
        },
        from_handler: None,
        check: None,
    },
    Setting {
        name: "unreadable_after",
        env: "WEIR_UNREADABLE_AFTER_MS",
        default: "60 s",
        apply: |c, v| {
            c.unreadable_after = millis(v)?;
            Ok(())
        },
        from_handler: None,
        check: Some(|c| match c.unreadable_after.is_zero() {
            true => Err("must be above 0".into()),
            false => Ok(()),
        }),
    },
    Setting {
        name: "max_attempts",
        env: "WEIR_RETRY_MAX_ATTEMPTS",
        default: "5 attempts (0: retry forever)",
        apply: |c, v| {
            c.retry.max_attempts = num(v)?;
            Ok(())
        },
        from_handler: Some(|c, h| {
            if let Some(n) = h.max_attempts {
                c.retry.max_attempts = n;
            }
        }),
        check: None,
    },
    Setting {
        name: "backoff",
        env: "WEIR_RETRY_BACKOFF_MS",
        default: "100 ms, doubling",
        apply: |c, v| {
            c.retry.backoff = millis(v)?;
            Ok(())
        },
        from_handler: Some(|c, h| {
            if let Some(ms) = h.backoff_ms {
                c.retry.backoff = Duration::from_millis(ms);
            }
        }),
        check: None,
    },
    Setting {
        name: "max_backoff",
        env: "WEIR_RETRY_MAX_BACKOFF_MS",
        default: "10 s",
        apply: |c, v| {
            c.retry.max_backoff = millis(v)?;
            Ok(())
        },
        from_handler: Some(|c, h| {
            if let Some(ms) = h.max_backoff_ms {
                c.retry.max_backoff = Duration::from_millis(ms);
            }
        }),
        check: None,
    },
    Setting {
        name: "dead_letter_topic",
        env: "WEIR_DEAD_LETTER_TOPIC",
        default: "`{topic}.dlq` (empty: off)",
        apply: |c, v| {
            c.dead_letter_topic = optional(v);
            Ok(())
        },
        from_handler: Some(|c, h| {
            if let Some(t) = h.dead_letter_topic {
                c.dead_letter_topic = optional(t);
            }
        }),
        check: None,
    },
    Setting {
        name: "keep_key_order",
        env: "WEIR_DEAD_LETTER_KEEP_KEY_ORDER",
        default: "false",
        apply: |c, v| {
            c.keep_key_order = flag(v)?;
            Ok(())
        },
        from_handler: Some(|c, h| {
            if let Some(k) = h.keep_key_order {
                c.keep_key_order = k;
            }
        }),
        check: Some(
            |c| match c.keep_key_order && c.dead_letter_topic.is_none() {
                true => Err("needs a dead-letter topic".into()),
                false => Ok(()),
            },
        ),
    },
    Setting {
        name: "event_time_field",
        env: "WEIR_EVENT_TIME_FIELD",
        default: "unset: the handler's event time (by default the record's Kafka timestamp)",
        apply: |c, v| {
            c.event_time_field = optional(v);
            Ok(())
        },
        from_handler: None,
        check: None,
    },
    Setting {
        name: "event_time_max_ahead",
        env: "WEIR_EVENT_TIME_MAX_AHEAD_MS",
        default: "86400000 (a day): a record whose event time is further past the wall clock, or before 1969, is undecodable (dead-lettered)",
        apply: |c, v| {
            c.event_time_max_ahead = millis(v)?;
            Ok(())
        },
        from_handler: None,
        check: None,
    },
    Setting {
        name: "late_topic",
        env: "WEIR_LATE_TOPIC",
        default: "`{topic}.late` (empty: late records are dropped, still counted)",
        apply: |c, v| {
            c.late_topic = optional(v);
            Ok(())
        },
        from_handler: Some(|c, h| {
            if let Some(t) = h.late_topic {
                c.late_topic = optional(t);
            }
        }),
        check: None,
    },
    Setting {
        name: "idle_close_after",
        env: "WEIR_IDLE_CLOSE_AFTER_MS",
        default: "off (0): an idle partition's watermark waits for records",
        apply: |c, v| {
            let d = millis(v)?;
            c.idle_close_after = (!d.is_zero()).then_some(d);
            Ok(())
        },
        from_handler: Some(|c, h| {
            if let Some(ms) = h.idle_close_after_ms {
                c.idle_close_after = (ms > 0).then(|| Duration::from_millis(ms));
            }
        }),
        check: None,
    },
    Setting {
        name: "changelog",
        env: "WEIR_CHANGELOG",
        default: "false (state stays on the worker's disk)",
        apply: |c, v| {
            c.changelog = flag(v)?;
            Ok(())
        },
        from_handler: None,
        check: None,
    },
    Setting {
        name: "allow_partial_history",
        env: "WEIR_ALLOW_PARTIAL_HISTORY",
        default: "false: a partition with no state whose first records were deleted is refused",
        apply: |c, v| {
            c.allow_partial_history = flag(v)?;
            Ok(())
        },
        from_handler: None,
        check: None,
    },
];

/// `name (ENV)`, as errors name a setting.
pub(crate) fn label(name: &str) -> String {
    match SETTINGS.iter().find(|s| s.name == name) {
        Some(s) => format!("{} ({})", s.name, s.env),
        None => name.to_owned(),
    }
}

/// The setting whose variable is closest to `env` (a likely typo), if any is close.
pub(crate) fn closest(env: &str) -> Option<&'static Setting> {
    SETTINGS
        .iter()
        .map(|s| (edit_distance(env, s.env), s))
        .filter(|(d, s)| *d <= s.env.len().max(4) / 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, s)| s)
}

/// Levenshtein distance over bytes.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(ca != cb));
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_lists_every_setting_with_its_default() {
        let readme = include_str!("../../../README.md");
        for s in SETTINGS {
            let row = readme
                .lines()
                .find(|l| l.starts_with('|') && l.contains(&format!("`{}`", s.env)))
                .unwrap_or_else(|| panic!("README has no row for {}", s.env));
            assert!(
                row.contains(s.default),
                "README's row for {} does not say its default {:?}: {row}",
                s.env,
                s.default
            );
        }
    }

    #[test]
    fn typos_find_the_setting_meant() {
        assert_eq!(
            closest("WEIR_BATCHSIZE").map(|s| s.env),
            Some("WEIR_BATCH_SIZE")
        );
        assert_eq!(closest("WEIR_BROKER").map(|s| s.env), Some("WEIR_BROKERS"));
        assert_eq!(closest("WEIR_SOMETHING_ELSE_ENTIRELY").map(|s| s.env), None);
    }
}

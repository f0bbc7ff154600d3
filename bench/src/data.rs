//! The records a run reads: topics, keyed records, words and Zipf-drawn lines.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::args::WORDS;

pub(crate) async fn create_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
) -> Result<(), String> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| e.to_string())?;
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1");
    let results = admin
        .create_topics([&t], &AdminOptions::new())
        .await
        .map_err(|e| e.to_string())?;
    for r in results {
        r.map_err(|(t, e)| format!("creating {t}: {e}"))?;
    }
    Ok(())
}

pub(crate) async fn produce(
    brokers: &str,
    topic: &str,
    n: u64,
    keys: u64,
    lines: bool,
) -> Result<(), String> {
    let mut text = lines.then(Lines::new);
    let records = (0..n).map(|i| {
        let key = format!("k{}", i % keys.max(1));
        let value = match &mut text {
            Some(text) => text.next_line(),
            None => words_of(i),
        };
        (key, value)
    });
    produce_records(brokers, topic, records).await
}

/// The bench's producer settings: large batches after a short linger.
pub(crate) fn producer_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000");
    config
}

/// Produces `(key, value)` records, partitioned by key, and waits for their acknowledgement.
pub(crate) async fn produce_records(
    brokers: &str,
    topic: &str,
    records: impl Iterator<Item = (String, String)>,
) -> Result<(), String> {
    let producer: FutureProducer = producer_config(brokers)
        .create()
        .map_err(|e| e.to_string())?;
    let mut inflight = Vec::new();
    for (key, value) in records {
        let fut = producer
            .send_result(FutureRecord::to(topic).key(&key).payload(&value))
            .map_err(|(e, _)| e.to_string())?;
        inflight.push(fut);
        if inflight.len() >= 100_000 {
            for f in inflight.drain(..) {
                f.await
                    .map_err(|e| e.to_string())?
                    .map_err(|(e, _)| e.to_string())?;
            }
        }
    }
    for f in inflight {
        f.await
            .map_err(|e| e.to_string())?
            .map_err(|(e, _)| e.to_string())?;
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// 100 bytes of words, different per record.
pub(crate) fn words_of(i: u64) -> String {
    let mut value = String::with_capacity(100);
    let mut w = i as usize;
    while value.len() < 94 {
        value.push_str(WORDS[w % WORDS.len()]);
        value.push(' ');
        w = w.wrapping_mul(31).wrapping_add(7);
    }
    value.truncate(100);
    while value.len() < 100 {
        value.push('.');
    }
    value
}

/// Text lines of 16 words drawn from a 5000-word vocabulary with Zipf frequencies (the n-th
/// most common word has weight 1/n), as in natural text; some words capitalised, some
/// followed by punctuation.
pub(crate) struct Lines {
    pub(crate) vocabulary: Vec<String>,
    /// Cumulative weights, for sampling by binary search.
    pub(crate) cumulative: Vec<f64>,
    pub(crate) rng: u64,
}

impl Lines {
    pub(crate) const WORDS_PER_LINE: usize = 16;
    pub(crate) const VOCABULARY: usize = 5000;

    pub(crate) fn new() -> Self {
        let syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "po"];
        let vocabulary = (0..Self::VOCABULARY)
            .map(|mut n| {
                let mut word = String::new();
                loop {
                    word.push_str(syllables[n % syllables.len()]);
                    n /= syllables.len();
                    if n == 0 {
                        break word;
                    }
                }
            })
            .collect();
        let mut total = 0.0;
        let cumulative = (1..=Self::VOCABULARY)
            .map(|rank| {
                total += 1.0 / rank as f64;
                total
            })
            .collect();
        Self {
            vocabulary,
            cumulative,
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// xorshift64*: deterministic, so every run reads the same text.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn next_line(&mut self) -> String {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let mut line = String::with_capacity(128);
        for i in 0..Self::WORDS_PER_LINE {
            let r = self.next_u64();
            let x = (r >> 11) as f64 / (1u64 << 53) as f64 * total;
            let rank = self.cumulative.partition_point(|c| *c < x);
            let word = &self.vocabulary[rank.min(Self::VOCABULARY - 1)];
            if i > 0 {
                line.push(' ');
            }
            if r % 16 == 0 {
                // A capitalised word (the start of a sentence).
                let mut chars = word.chars();
                line.extend(chars.next().map(|c| c.to_ascii_uppercase()));
                line.extend(chars);
            } else {
                line.push_str(word);
            }
            if r % 10 == 1 {
                line.push(',');
            }
        }
        line.push('.');
        line
    }
}

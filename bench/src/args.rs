//! The command line: scenarios and options.

pub(crate) const SCENARIOS: &[&str] = &[
    "raw",
    "raw-defaults",
    "raw-pipe",
    "weir-stateless",
    "weir-keyed-count",
    "weir-keyed-count-emit",
    "weir-window-count",
    "weir-enrich",
    "weir-wordcount",
    "hand-loop-batched",
    "hand-loop",
    "quix",
    "weir-restore",
    "raw-live",
    "weir-live",
    "raw-nats",
    "raw-amqp",
    "raw-sqs",
];
/// Scenarios too slow to read the whole backlog in reasonable time: they read only
/// `--slow-messages` records (their msg/s is still comparable). `quix` reads for 50 s at most
/// instead (bench/quix/wordcount.py), ten times its commit interval.
pub(crate) const SLOW: &[&str] = &["hand-loop"];
/// The raw consumers: the ceiling of a run is the best of them.
pub(crate) const RAW: &[&str] = &["raw", "raw-defaults", "raw-nats", "raw-amqp", "raw-sqs"];
/// The raw consumers of NATS, RabbitMQ and SQS, left out of a Kafka run's `all`.
pub(crate) const OTHER_BROKERS_RAW: &[&str] = &["raw-nats", "raw-amqp", "raw-sqs"];
pub(crate) const WORDS: &[&str] = &[
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
];

pub(crate) struct Args {
    pub(crate) scenario: String,
    pub(crate) messages: u64,
    pub(crate) slow_messages: u64,
    pub(crate) partitions: i32,
    /// Distinct record keys (`k0`..): the keyed count keeps one state entry per key.
    pub(crate) keys: u64,
    /// Records per second the `weir-live` scenario produces.
    pub(crate) rate: u64,
    /// With `all`: how many times the whole sequence runs; each scenario reports its best.
    pub(crate) rounds: u32,
    /// Record values: 100 bytes of 8 words, or `lines` of 16 words from a 5000-word
    /// vocabulary with Zipf frequencies (the word count of issue 14).
    pub(crate) lines: bool,
    pub(crate) child: Option<(String, String)>,
}

pub(crate) fn parse_args() -> Result<Args, String> {
    let embedded = std::env::var("WEIR_BROKERS").map_or(true, |b| b.trim().is_empty());
    let mut args = Args {
        scenario: "all".into(),
        messages: if embedded { 200_000 } else { 1_000_000 },
        slow_messages: 50_000,
        partitions: if embedded { 8 } else { 4 },
        keys: 10_000,
        rate: 10_000,
        rounds: 1,
        lines: false,
        child: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--scenario" => args.scenario = value()?,
            "--messages" => {
                args.messages = value()?.parse().map_err(|e| format!("--messages: {e}"))?
            }
            "--slow-messages" => {
                args.slow_messages = value()?
                    .parse()
                    .map_err(|e| format!("--slow-messages: {e}"))?
            }
            "--partitions" => {
                args.partitions = value()?.parse().map_err(|e| format!("--partitions: {e}"))?
            }
            "--keys" => args.keys = value()?.parse().map_err(|e| format!("--keys: {e}"))?,
            "--rate" => args.rate = value()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--rounds" => args.rounds = value()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--values" => {
                args.lines = match value()?.as_str() {
                    "words" => false,
                    "lines" => true,
                    other => return Err(format!("--values is words or lines, not {other}")),
                }
            }
            "--child" => {
                let brokers = value()?;
                let topic = value()?;
                args.child = Some((brokers, topic));
            }
            other => return Err(format!("unknown argument {other}; see the crate docs")),
        }
    }
    // `all`, one scenario, or several, comma-separated (run in that order, as `all` runs).
    if args.scenario != "all" && !args.scenario.split(',').all(|s| SCENARIOS.contains(&s)) {
        return Err(format!(
            "--scenario is all, or one or more (comma-separated) of {}",
            SCENARIOS.join(", ")
        ));
    }
    Ok(args)
}

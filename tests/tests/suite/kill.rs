//! Scale-out under SIGKILL, on the real broker: three worker processes, each with its OWN state
//! directory (as if on three machines) and the changelog on, keep per key a count and a sum of
//! distinct numbered records (both change on every record: a record applied twice or lost
//! shows) and emit every new tally. The driver SIGKILLs a random worker each round while
//! records are in flight (at a measured processing point short of the end) and restarts it,
//! every third restart with an empty state directory. At the end:
//! - the newest store of each partition holds exact counts and sums (every store must open);
//! - every record's tally was emitted at least once; copies of one (same source partition and
//!   offset) are identical, so a consumer drops them by those headers; they are bounded;
//! - at least one store was restored from the changelog.
//!
//! Short form by default (CI); `WEIR_KILL_TEST_ORDERS=200000 WEIR_KILL_TEST_ROUNDS=20` for the
//! long one.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use weir::state::StoreReader;
use weir_tests::tally::{tallies_topic, Emitted, Tally, TALLIES};
use weir_tests::*;

const PARTITIONS: i32 = 4;
const WORKERS: usize = 3;
const KEYS: usize = 50;
const BATCH: usize = 500;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic PRNG (xorshift), seeded per run and printed, so a failing run's
/// kill sequence can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

struct Cluster {
    bootstrap: String,
    group: String,
    topic: String,
    dirs: Vec<tempfile::TempDir>,
    logs: tempfile::TempDir,
    children: Vec<Option<Child>>,
    starts: usize,
}

impl Cluster {
    fn start(&mut self, i: usize) {
        let log = std::fs::File::create(self.logs.path().join(format!("{}.log", self.starts)))
            .expect("log file");
        self.starts += 1;
        let child = weir_tests::worker_command(env!("CARGO_BIN_EXE_tally-worker"))
            .env("WEIR_BROKERS", &self.bootstrap)
            .env("WEIR_GROUP", &self.group)
            .env("WEIR_TOPICS", &self.topic)
            .env("WEIR_STATE_DIR", self.dirs[i].path())
            .env("WEIR_CHANGELOG", "true")
            .env("WEIR_BATCH_SIZE", BATCH.to_string())
            .env("TALLY_WORKER_DELAY_US", "500")
            .env("WEIR_KAFKA_SESSION_TIMEOUT_MS", SESSION_TIMEOUT_MS)
            .env("WEIR_KAFKA_HEARTBEAT_INTERVAL_MS", "500")
            .env("WEIR_PROGRESS_INTERVAL_MS", "0")
            .env(
                "RUST_LOG",
                std::env::var("WEIR_KILL_TEST_LOG")
                    .unwrap_or_else(|_| "warn,weir::delivery::restore=info".into()),
            )
            .stdin(Stdio::null())
            // tracing's fmt subscriber writes to stdout
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn tally-worker");
        self.children[i] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    fn stop_all(&mut self) {
        let mut failed = Vec::new();
        for c in self.children.iter_mut().filter_map(Option::take) {
            let mut c = c;
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let exit = c.wait().expect("wait");
            if !exit.success() {
                failed.push(exit);
            }
        }
        assert!(
            failed.is_empty(),
            "graceful stops failed: {failed:?}; worker logs:\n{}",
            self.warnings().join("\n")
        );
    }

    /// Per partition, the store file with the highest stored offset, and that offset. While
    /// workers run (`strict` false) a file another process is just creating is passed over;
    /// once they are stopped every store must open.
    fn newest_stores(&self, strict: bool) -> BTreeMap<i32, (i64, PathBuf)> {
        let mut best: BTreeMap<i32, (i64, PathBuf)> = BTreeMap::new();
        for dir in &self.dirs {
            for (p, path) in store_files(dir.path(), &self.group, &self.topic) {
                let store = match StoreReader::open(&path) {
                    Ok(s) => s,
                    Err(e) if strict => panic!("a store cannot be read: {e}"),
                    Err(_) => continue,
                };
                let next = store
                    .next_offset(&self.topic, p)
                    .ok()
                    .flatten()
                    .unwrap_or(-1);
                if best.get(&p).is_none_or(|(o, _)| next > *o) {
                    best.insert(p, (next, path));
                }
            }
        }
        best
    }

    /// Records processed in all, by the newest store of each partition.
    fn processed(&self) -> i64 {
        self.newest_stores(false)
            .values()
            .map(|(o, _)| (*o).max(0))
            .sum()
    }

    /// Distinct warning and error lines of the workers' logs (timestamps cut), for the report.
    fn warnings(&self) -> Vec<String> {
        let mut out = std::collections::BTreeSet::new();
        for f in std::fs::read_dir(self.logs.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            for line in std::fs::read_to_string(f.path())
                .unwrap_or_default()
                .lines()
            {
                if line.contains("WARN") || line.contains("ERROR") || line.contains("DEBUG") {
                    out.insert(
                        line.split_once(' ')
                            .map_or(line, |(_, l)| l)
                            .chars()
                            .take(300)
                            .collect(),
                    );
                }
            }
        }
        out.into_iter().collect()
    }

    fn restores(&self) -> usize {
        count_in_logs(
            self.logs.path(),
            "partition store restored from its changelog",
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_with_own_state_dirs_survive_sigkills() {
    let records_n = env_or("WEIR_KILL_TEST_ORDERS", 20_000);
    let rounds = env_or("WEIR_KILL_TEST_ROUNDS", 5).max(1);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut rng = Rng(seed);
    let started = Instant::now();

    let broker = TestBroker::start(BrokerKind::Tansu);
    let (topic, group) = (unique("tally"), unique("kill"));
    broker.create_topic(&topic, PARTITIONS).await;
    broker
        .create_one_topic(&tallies_topic(&topic), PARTITIONS)
        .await;
    broker
        .create_one_topic(&format!("{group}-{topic}-changelog"), PARTITIONS)
        .await;
    let mut cluster = Cluster {
        bootstrap: broker.bootstrap().to_owned(),
        group: group.clone(),
        topic: topic.clone(),
        dirs: (0..WORKERS)
            .map(|_| tempfile::tempdir().expect("dir"))
            .collect(),
        logs: tempfile::tempdir().expect("logs"),
        children: (0..WORKERS).map(|_| None).collect(),
        starts: 0,
    };

    // Distinct records: `v{i}` adds i to its key's sum.
    let records = keyed_records(0, records_n, KEYS);
    let mut expected: BTreeMap<String, Tally> = BTreeMap::new();
    for (i, (key, _)) in records.iter().enumerate() {
        let t = expected.entry(key.clone()).or_default();
        t.count += 1;
        t.sum += i as u64;
    }
    broker.produce(&topic, None, records.clone()).await;
    for i in 0..WORKERS {
        cluster.start(i);
    }

    // Kill round r once r/(rounds+2) of the records are processed: always short of the end,
    // with records in flight. The last kill leaves 2/7 of the records (over half a second of
    // processing at the handler's delay; the check above polls every 100 ms).
    let mut kills = 0;
    let mut emptied = 0;
    for round in 1..=rounds {
        let want = (records_n * round / (rounds + 2)) as i64;
        wait_processed(Duration::from_secs(180), want, || cluster.processed()).await;
        // Every third kill also empties the victim's state dir. That victim is the worker
        // holding the newest store of a partition, so that the partition's state survives
        // only in the changelog and its next owner must restore it. (A random victim may own
        // nothing: a worker restarted by the previous round gets partitions only once the
        // killed member's session has timed out.)
        let empties = (kills + 1) % 3 == 0;
        let holders: Vec<usize> = cluster
            .newest_stores(false)
            .values()
            .filter(|(next, _)| *next > 0)
            .filter_map(|(_, path)| {
                (0..WORKERS).find(|i| path.starts_with(cluster.dirs[*i].path()))
            })
            .collect();
        let victim = if empties && !holders.is_empty() {
            holders[rng.next(holders.len())]
        } else {
            rng.next(WORKERS)
        };
        cluster.kill(victim);
        let at = cluster.processed();
        assert!(
            at < records_n as i64,
            "round {round}: the kill came after the end ({at} of {records_n} processed)"
        );
        kills += 1;
        if empties {
            let dir = cluster.dirs[victim].path().to_owned();
            std::fs::remove_dir_all(&dir).expect("empty the state dir");
            std::fs::create_dir_all(&dir).expect("recreate the state dir");
            emptied += 1;
        }
        cluster.start(victim);
    }

    // Done when the newest stores of all partitions together have processed every record
    // (a partition's offsets count its records from 0).
    wait_until("every record processed", Duration::from_secs(240), || {
        let at: BTreeMap<i32, i64> = cluster
            .newest_stores(false)
            .iter()
            .map(|(p, (o, _))| (*p, *o))
            .collect();
        async move {
            let done: i64 = at.values().map(|o| (*o).max(0)).sum();
            if done == records_n as i64 {
                Ok(())
            } else {
                Err(format!(
                    "{done} of {records_n} processed; stored offsets {at:?}"
                ))
            }
        }
    })
    .await;
    cluster.stop_all();

    // State: the newest store of each partition holds exact tallies.
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    for (p, (_, path)) in cluster.newest_stores(true) {
        let store = StoreReader::open(&path).expect("open");
        for (key, tally) in store.entries::<String, Tally>(TALLIES).expect("entries") {
            assert!(
                tallies.insert(key.clone(), tally).is_none(),
                "key {key} in two partitions (p{p})"
            );
        }
    }
    assert_eq!(
        tallies, expected,
        "tallies in state (count and sum per key)"
    );

    // Emitted: every record's tally at least once; copies of one record's (same source
    // partition and offset) identical; the tallies of each key 1..=count all there.
    let emitted = read_all(broker.bootstrap(), &tallies_topic(&topic), PARTITIONS);
    let mut by_source: HashMap<(String, String), Emitted> = HashMap::new();
    let mut duplicates = 0usize;
    for m in &emitted {
        let e: Emitted =
            serde_json::from_slice(m.payload().unwrap_or_default()).expect("an emitted tally");
        let source = (
            header(m, "weir.source.partition").expect("source partition header"),
            header(m, "weir.source.offset").expect("source offset header"),
        );
        match by_source.get(&source) {
            Some(first) => {
                assert_eq!(first, &e, "two different tallies from record {source:?}");
                duplicates += 1;
            }
            None => {
                by_source.insert(source, e);
            }
        }
    }
    assert_eq!(
        by_source.len(),
        records_n,
        "records whose tally was emitted (by distinct source offset)"
    );
    let mut counts_seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in by_source.values() {
        counts_seen
            .entry(e.key.clone())
            .or_default()
            .push(e.tally.count);
    }
    for (key, mut counts) in counts_seen {
        counts.sort_unstable();
        let want: Vec<u64> = (1..=expected[&key].count).collect();
        assert_eq!(
            counts, want,
            "every new tally of {key} emitted once after de-duplication"
        );
    }
    // A kill re-sends at most what was sent and not yet acknowledged: the outbox of one
    // batch per partition.
    let bound = (kills + 1) * PARTITIONS as usize * BATCH;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicate emits, more than {bound} ({kills} kills)"
    );

    let restores = cluster.restores();
    let changelog = read_all(
        broker.bootstrap(),
        &format!("{group}-{topic}-changelog"),
        PARTITIONS,
    );
    for w in cluster.warnings().iter().take(40) {
        eprintln!("worker log: {w}");
    }
    eprintln!(
        "kill test (seed {seed}): {records_n} records, {kills} SIGKILLs in flight ({emptied} \
         with an emptied state dir), {restores} changelog restores, {} changelog records, {} \
         tallies emitted ({duplicates} duplicates by source offset), {:.1?} wall",
        changelog.len(),
        emitted.len(),
        started.elapsed()
    );
    assert_eq!(kills, rounds);
    assert!(restores >= 1, "no store was restored from the changelog");
}

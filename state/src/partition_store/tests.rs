//! Crash properties: the reopened store always equals the fold of exactly the messages before
//! its stored offset, whatever the batch sizes and wherever the process dies.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::cache::CacheBudget;
use crate::outbox_run::OutboxRecord;
use crate::reader::StoreReader;
use crate::schema::SCHEMA_VERSION;

/// One message: add `amount` to `key`, or delete `key` when `amount` is 0; when the flag is
/// set, its first attempt fails after its writes (they are rolled back and the batch runs
/// again, as the batch runner does).
type Msg = (u8, u8, bool);

#[derive(Debug, Clone)]
#[allow(clippy::enum_variant_names)]
enum Crash {
    /// The process dies while the batch is being processed: the write-set is lost.
    BeforeCommit { after_msgs: usize },
    /// The process dies inside the commit transaction after `rows` row writes.
    MidCommit { rows: usize },
    /// The commit fails after `rows` row writes (disk full); the batch runs again on the
    /// same store handle, reading through its cache.
    FailedCommit { rows: usize },
}

fn fold(msgs: &[Msg]) -> BTreeMap<u8, u64> {
    let mut m = BTreeMap::new();
    for &(k, a, _) in msgs {
        if a == 0 {
            m.remove(&k);
        } else {
            *m.entry(k).or_insert(0) += u64::from(a);
        }
    }
    m
}

fn reopen_and_check(path: &Path, msgs: &[Msg]) -> i64 {
    let store = PartitionStore::open(path).expect("reopen");
    let next = store.next_offset("t", 3).expect("offset").unwrap_or(0);
    let got: BTreeMap<u8, u64> = store.entries("sum").expect("entries").into_iter().collect();
    assert_eq!(
        got,
        fold(&msgs[..next as usize]),
        "state != fold of msgs[..{next}]"
    );
    next
}

/// Processes `msgs` from offset `start` in batches of `sizes` on a store whose cache has
/// `budget` bytes; a crash, if any, hits the first batch. Returns when all are done or the
/// process "died".
fn run(
    path: &Path,
    msgs: &[Msg],
    start: i64,
    sizes: &[usize],
    crash: Option<&Crash>,
    budget: usize,
) {
    let store = PartitionStore::open(path)
        .expect("open")
        .with_cache(CacheBudget::new(budget));
    let mut offset = start as usize;
    let mut sizes = sizes.iter().cycle();
    let mut crash = crash;
    let mut failed = std::collections::HashSet::new();
    while offset < msgs.len() {
        let size = (*sizes.next().expect("cycle")).max(1);
        let end = (offset + size).min(msgs.len());
        let mut ws = WriteSet::default();
        for (i, &(k, a, fails)) in msgs[offset..end].iter().enumerate() {
            if let Some(Crash::BeforeCommit { after_msgs }) = crash {
                if i == *after_msgs % size {
                    return;
                }
            }
            // A record that fails is rolled back to its savepoint and runs again in place,
            // after the batch's earlier records, as the batch runner retries it.
            loop {
                ws.savepoint();
                if a == 0 {
                    ws.delete("sum", &k).expect("delete");
                } else if a % 2 == 1 {
                    // In place, through the batch's buffer.
                    store
                        .update_through(&mut ws, "sum", &k, |v: Option<u64>| {
                            Some(v.unwrap_or(0) + u64::from(a))
                        })
                        .expect("update");
                } else {
                    let v: u64 = store.get_through(&ws, "sum", &k).expect("get").unwrap_or(0);
                    ws.put("sum", &k, &(v + u64::from(a))).expect("put");
                }
                if fails && failed.insert(offset + i) {
                    // More writes of the failed record, to the same key and others, all undone.
                    store
                        .update_through(&mut ws, "sum", &k, |v: Option<u64>| {
                            Some(v.unwrap_or(0) + 1000)
                        })
                        .expect("update");
                    store
                        .update_through(&mut ws, "sum", &k.wrapping_add(1), |_: Option<u64>| None)
                        .expect("update");
                    ws.put("sum", &k.wrapping_sub(1), &7u64).expect("put");
                    ws.rollback();
                    continue;
                }
                ws.release();
                break;
            }
        }
        match crash {
            Some(Crash::MidCommit { rows }) => {
                store.crash_next_commit_after(rows % (ws.len() + 1));
                store
                    .commit(&mut ws, "t", 3, end as i64)
                    .expect("interrupted commit");
                return;
            }
            Some(Crash::FailedCommit { rows }) => {
                store.fail_next_commit_after(rows % (ws.len() + 1));
                store
                    .commit(&mut ws, "t", 3, end as i64)
                    .expect_err("failed commit");
                // The batch runs again from its first record.
                crash = None;
                continue;
            }
            _ => {}
        }
        store.commit(&mut ws, "t", 3, end as i64).expect("commit");
        offset = end;
        crash = None;
    }
}

fn crash_strategy() -> impl Strategy<Value = Crash> {
    prop_oneof![
        (0usize..64).prop_map(|after_msgs| Crash::BeforeCommit { after_msgs }),
        (0usize..64).prop_map(|rows| Crash::MidCommit { rows }),
        (0usize..64).prop_map(|rows| Crash::FailedCommit { rows }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn reopened_store_is_fold_of_messages_before_its_offset(
        msgs in prop::collection::vec((0u8..8, 0u8..5, prop::bool::weighted(0.05)), 1..300),
        sizes in prop::collection::vec(1usize..40, 1..8),
        crashes in prop::collection::vec((0usize..300, crash_strategy()), 0..5),
        // No cache, a cache that evicts all the time, one that holds everything.
        budget in prop_oneof![Just(0usize), 1usize..800, Just(1usize << 20)],
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("g/t/3.sqlite");
        let mut next = 0;
        for (skip, crash) in &crashes {
            // Process a random amount cleanly, then die in the next batch.
            let clean_until = (next as usize + skip).min(msgs.len());
            run(&path, &msgs[..clean_until], next, &sizes, None, budget);
            next = reopen_and_check(&path, &msgs);
            run(&path, &msgs, next, &sizes, Some(crash), budget);
            next = reopen_and_check(&path, &msgs);
        }
        run(&path, &msgs, next, &sizes, None, budget);
        let done = reopen_and_check(&path, &msgs);
        prop_assert_eq!(done as usize, msgs.len());
    }
}

#[test]
fn foreign_sqlite_file_is_refused_not_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0.sqlite");
    let conn = Connection::open(&path).expect("open");
    conn.execute_batch("CREATE TABLE customers (id INTEGER); INSERT INTO customers VALUES (1);")
        .expect("create");
    drop(conn);
    let err = PartitionStore::open(&path).expect_err("foreign file must be refused");
    assert!(matches!(err, Error::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("0.sqlite"), "{err}");
    let conn = Connection::open(&path).expect("open");
    let n: i64 = conn
        .query_row("SELECT count(*) FROM customers", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 1, "the foreign file was modified");
}

#[test]
fn corrupt_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("7.sqlite");
    std::fs::write(
        &path,
        b"this is not a database, it is forty bytes or more of junk text",
    )
    .expect("write");
    let err = PartitionStore::open(&path).expect_err("corrupt file must be refused");
    assert!(matches!(err, Error::Open { .. }), "{err}");
    assert!(err.to_string().contains("7.sqlite"), "{err}");
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("1.sqlite");
    drop(PartitionStore::open(&path).expect("open"));
    let conn = Connection::open(&path).expect("open");
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .expect("bump");
    drop(conn);
    let err = PartitionStore::open(&path).expect_err("newer schema must be refused");
    assert!(
        matches!(err, Error::NewerSchema { found, .. } if found == SCHEMA_VERSION + 1),
        "{err}"
    );
}

#[test]
fn concurrent_opens_of_a_new_file_all_succeed() {
    let dir = tempfile::tempdir().expect("tempdir");
    for round in 0..20 {
        let path = dir.path().join(format!("{round}.sqlite"));
        let openers: Vec<_> = (0..6)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    PartitionStore::open(&path).map(|s| s.next_offset("t", 0))
                })
            })
            .collect();
        for o in openers {
            let r = o.join().expect("thread");
            assert!(matches!(r, Ok(Ok(None))), "round {round}: {r:?}");
        }
    }
}

#[test]
fn a_later_claim_fences_the_earlier_owner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0.sqlite");
    let old = PartitionStore::open(&path).expect("open");
    let new = PartitionStore::open(&path).expect("open again");
    let mut ws = WriteSet::default();
    ws.put("s", "k", &1).expect("put");
    assert_eq!(old.claim("t", 0).expect("claim"), 1);
    old.commit(&mut ws, "t", 0, 10).expect("the owner commits");
    assert_eq!(new.claim("t", 0).expect("claim"), 2);
    let err = old.commit(&mut ws, "t", 0, 20).expect_err("fenced");
    assert!(
        matches!(
            err,
            Error::Fenced {
                claimed: 1,
                current: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(new.next_offset("t", 0).expect("offset"), Some(10));
    new.commit(&mut ws, "t", 0, 30)
        .expect("the new owner commits");
    assert_eq!(old.next_offset("t", 0).expect("offset"), Some(30));
    // Another partition of the same file is not fenced by this claim.
    old.commit(&mut ws, "t", 1, 5).expect("other partition");
}

#[test]
fn a_version_1_file_is_upgraded_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0.sqlite");
    {
        let s = PartitionStore::open(&path).expect("open");
        s.commit(&mut WriteSet::default(), "t", 0, 7)
            .expect("commit");
    }
    {
        let conn = Connection::open(&path).expect("raw open");
        conn.execute_batch("DROP TABLE owners; PRAGMA user_version = 1;")
            .expect("make it version 1");
    }
    let s = PartitionStore::open(&path).expect("reopen");
    assert_eq!(s.next_offset("t", 0).expect("offset"), Some(7));
    assert_eq!(s.claim("t", 0).expect("claim"), 1);
}

/// A version-3 file (as the previous release wrote it: an outbox without timestamps, no
/// rewinds) keeps its state, offset and waiting outbox rows, and takes the new columns.
#[test]
fn a_version_3_file_is_upgraded_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0.sqlite");
    {
        let s = PartitionStore::open(&path).expect("open");
        let mut ws = WriteSet::default();
        ws.put("totals", "alice", &5).expect("put");
        s.commit(&mut ws, "t", 0, 7).expect("commit");
    }
    {
        let conn = Connection::open(&path).expect("raw open");
        conn.execute_batch(
            "DROP TABLE rewinds; DROP TABLE outbox_runs;
             CREATE TABLE outbox (
                 id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, partition INTEGER,
                 key BLOB, value BLOB, headers TEXT NOT NULL);
             INSERT INTO outbox (topic, partition, key, value, headers)
                 VALUES ('out', NULL, x'61', x'35', '[]');
             PRAGMA user_version = 3;",
        )
        .expect("make it version 3");
    }
    let s = PartitionStore::open(&path).expect("reopen");
    assert_eq!(s.next_offset("t", 0).expect("offset"), Some(7));
    assert_eq!(s.get::<_, u64>("totals", "alice").expect("get"), Some(5));
    let waiting = s.pending_outbox(10).expect("pending");
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].1.timestamp, None);
    assert_eq!(
        s.position("t", 0).expect("position"),
        Some(ChangelogPosition {
            generation: 0,
            next_offset: 7
        })
    );
    assert!(s.rewind("t", 0, 3, None).expect("rewind") > 0);
}

#[test]
fn outbox_and_changelog_entries_commit_with_the_batch_and_leave_once_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = PartitionStore::open(dir.path().join("0.sqlite")).expect("open");
    let mut ws = WriteSet::default();
    ws.put("totals", "alice", &5).expect("put");
    ws.delete("totals", "bob").expect("delete");
    let out = OutboxRecord {
        topic: "out".into(),
        partition: None,
        key: Some(b"alice".to_vec()),
        value: Some(b"5".to_vec()),
        headers: [("h", b"v")].into_iter().collect(),
        timestamp: Some(1_700_000_000_000),
    };
    ws.emit(out.clone());
    store
        .commit_with_changelog(&mut ws, "in", 2, 10, "in.changelog")
        .expect("commit");
    let pending = store.pending_outbox(100).expect("pending");
    let records: Vec<&OutboxRecord> = pending.iter().map(|(_, r)| r).collect();
    assert_eq!(records.len(), 4, "{records:?}");
    assert!(records.contains(&&out), "the emit, with its timestamp");
    let changelog: Vec<_> = records
        .iter()
        .filter(|r| r.topic == "in.changelog")
        .map(|r| {
            assert_eq!(r.partition, Some(2));
            assert_eq!(
                r.headers,
                [(crate::wire::header::SOURCE_NEXT_OFFSET, b"10")]
                    .into_iter()
                    .collect::<crate::headers::Headers>()
            );
            ChangelogEntry::parse(r.key.as_deref(), r.value.as_deref()).expect("entry")
        })
        .collect();
    let state = |key: &str, value: Option<&str>| ChangelogEntry::State {
        store: "totals".into(),
        key: key.into(),
        value: value.map(str::to_owned),
    };
    assert!(changelog.contains(&state("\"alice\"", Some("5"))));
    assert!(changelog.contains(&state("\"bob\"", None)));
    assert!(changelog.contains(&ChangelogEntry::Offset(10)));
    assert_eq!(
        records[2], &out,
        "emitted records follow the changelog's state entries"
    );
    assert_eq!(
        ChangelogEntry::parse(records[3].key.as_deref(), records[3].value.as_deref()),
        Some(ChangelogEntry::Offset(10)),
        "the offset marker comes last"
    );

    let ids: Vec<i64> = pending.iter().take(2).map(|(id, _)| *id).collect();
    store.delete_outbox(&ids).expect("delete");
    assert_eq!(
        store.pending_outbox(100).expect("pending").len(),
        4,
        "a commit's records leave together, once all are acknowledged"
    );

    // A restore empties the store, then applies entries and finally the offset.
    store.reset("in", 2).expect("reset");
    assert_eq!(store.next_offset("in", 2).expect("offset"), None);
    assert!(store.pending_outbox(100).expect("pending").is_empty());
    store
        .apply_restored(
            &[("totals".into(), "\"carol\"".into(), Some("7".into()))],
            "in",
            2,
            Some(ChangelogPosition {
                generation: 5,
                next_offset: 10,
            }),
        )
        .expect("restore");
    assert_eq!(
        store.get::<_, u64>("totals", &"carol").expect("get"),
        Some(7)
    );
    assert_eq!(store.next_offset("in", 2).expect("offset"), Some(10));
    assert_eq!(
        store.position("in", 2).expect("position"),
        Some(ChangelogPosition {
            generation: 5,
            next_offset: 10
        }),
        "the restored generation is kept"
    );
}

#[test]
fn a_rewind_empties_the_store_under_a_higher_generation_and_tells_the_changelog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = PartitionStore::open(dir.path().join("0.sqlite")).expect("open");
    let mut batch = WriteSet::default();
    batch.put("totals", &"alice", &3u64).expect("put");
    batch.put("totals", &"bob", &4u64).expect("put");
    store
        .commit_with_changelog(&mut batch, "in", 0, 100, "cl")
        .expect("commit");
    let before = store.position("in", 0).expect("position").expect("some");
    assert_eq!(before.generation, 0);
    store.delete_outbox(&ids_of(&store)).expect("sent");

    let generation = store.rewind("in", 0, 20, Some("cl")).expect("rewind");
    let after = store.position("in", 0).expect("position").expect("some");
    assert_eq!(after.next_offset, 20);
    assert_eq!(after.generation, generation);
    assert!(after > before, "a rewind outranks what came before it");
    assert!(store
        .entries::<String, u64>("totals")
        .expect("entries")
        .is_empty());
    // A tombstone per key, then the marker, all under the new generation.
    let sent: Vec<(ChangelogEntry, Option<ChangelogPosition>)> = store
        .pending_outbox(100)
        .expect("pending")
        .into_iter()
        .map(|(_, r)| {
            let entry = ChangelogEntry::parse(r.key.as_deref(), r.value.as_deref()).expect("entry");
            let at = ChangelogPosition::from_headers(r.headers.iter());
            (entry, at)
        })
        .collect();
    let tombstone = |key: &str| ChangelogEntry::State {
        store: "totals".into(),
        key: key.into(),
        value: None,
    };
    // (The tombstones in any order: a batch's keys are not ordered; the marker last.)
    let (marker, tombstones) = sent.split_last().expect("entries");
    assert_eq!(marker, &(ChangelogEntry::Offset(20), Some(after)));
    let mut tombstones = tombstones.to_vec();
    tombstones.sort_by_key(|(e, _)| format!("{e:?}"));
    assert_eq!(
        tombstones,
        [
            (tombstone("\"alice\""), Some(after)),
            (tombstone("\"bob\""), Some(after)),
        ]
    );
    // Later batches carry the generation; a second rewind raises it again.
    store.delete_outbox(&ids_of(&store)).expect("sent");
    store
        .commit_with_changelog(&mut batch, "in", 0, 25, "cl")
        .expect("commit");
    let marker = store
        .pending_outbox(100)
        .expect("pending")
        .pop()
        .expect("marker")
        .1;
    assert_eq!(
        ChangelogPosition::from_headers(marker.headers.iter()),
        Some(ChangelogPosition {
            generation,
            next_offset: 25
        })
    );
    assert!(store.rewind("in", 0, 0, None).expect("rewind") > generation);
}

fn ids_of(store: &PartitionStore) -> Vec<i64> {
    store
        .pending_outbox(1000)
        .expect("pending")
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// Set in the child process of the SIGKILL test: the store it commits into.
const CHILD_STORE_ENV: &str = "WEIR_STATE_TEST_CHILD_STORE";

/// A process killed with SIGKILL while it writes a long commit (its transaction has spilled
/// pages into the WAL file) leaves the store as the previous commit left it: state and offset.
#[test]
fn sigkill_in_the_middle_of_a_long_commit_keeps_the_previous_commit() {
    if let Ok(path) = std::env::var(CHILD_STORE_ENV) {
        return long_commit_child(Path::new(&path));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0.sqlite");
    let wal = dir.path().join("0.sqlite-wal");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "partition_store::tests::sigkill_in_the_middle_of_a_long_commit_keeps_the_previous_commit",
            "--nocapture",
        ])
        .env(CHILD_STORE_ENV, &path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the child");
    // The child says when its first commit is done and the long one begins.
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).expect("read");
        assert!(n > 0, "the child ended before its long commit");
        if line.trim() == "long commit" {
            break;
        }
    }
    // Kill it once the long transaction has written pages to the WAL (mid-commit).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let wal_len = loop {
        let len = std::fs::metadata(&wal).map_or(0, |m| m.len());
        if len > 4 << 20 {
            break len;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the child finished its commit before it was killed (WAL {len} bytes)"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL never grew: {len} bytes"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap");
    assert!(!status.success(), "the child was killed: {status}");

    let store = PartitionStore::open(&path).expect("reopen");
    assert_eq!(store.next_offset("t", 0).expect("offset"), Some(10));
    let entries: Vec<(u32, u64)> = store.entries("big").expect("entries");
    assert_eq!(
        entries,
        (0..10).map(|k| (k, 1)).collect::<Vec<_>>(),
        "killed mid-commit (WAL at {wal_len} bytes): only the first commit is there"
    );
}

fn long_commit_child(path: &Path) {
    let store = PartitionStore::open(path).expect("open");
    let mut first = WriteSet::default();
    for k in 0..10u32 {
        first.put("big", &k, &1u64).expect("put");
    }
    store.commit(&mut first, "t", 0, 10).expect("first commit");
    let mut long = WriteSet::default();
    for k in 0..3_000_000u32 {
        long.put("big", &k, &2u64).expect("put");
    }
    println!("long commit");
    use std::io::Write as _;
    std::io::stdout().flush().expect("flush");
    store
        .commit(&mut long, "t", 0, 3_000_010)
        .expect("long commit");
    // Not reached when the parent kills us in time; then the parent's assertions fail.
    println!("committed");
}

/// What happens to the outbox next.
#[derive(Debug, Clone)]
enum OutboxStep {
    /// A batch commits this many emits (and, with the flag, changelog entries).
    Commit(u8, bool),
    /// Up to this many rows are handed out; acknowledged (deleted) or not.
    Take(u8, bool),
    /// The process stops and a new handle opens the file.
    Reopen,
    /// A restore empties the store.
    Reset,
}

fn outbox_step() -> impl Strategy<Value = OutboxStep> {
    prop_oneof![
        3 => (0u8..6, any::<bool>()).prop_map(|(n, c)| OutboxStep::Commit(n, c)),
        4 => (1u8..8, prop::bool::weighted(0.8)).prop_map(|(n, ack)| OutboxStep::Take(n, ack)),
        1 => Just(OutboxStep::Reopen),
        1 => Just(OutboxStep::Reset),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Rows handed out from memory are exactly the oldest rows of the table, in order, whatever
    /// was committed, sent, left unacknowledged, reopened or reset before: the tail in memory
    /// never skips, reorders or resends a row the table does not hold.
    #[test]
    fn the_outbox_hands_out_what_the_table_holds_oldest_first(
        steps in prop::collection::vec(outbox_step(), 1..60),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.sqlite");
        let mut store = PartitionStore::open(&path).expect("open");
        let (mut offset, mut emitted) = (0i64, 0u32);
        for step in steps {
            match step {
                OutboxStep::Commit(n, changelog) => {
                    let mut ws = WriteSet::default();
                    ws.put("counts", "k", &offset).expect("put");
                    for _ in 0..n {
                        emitted += 1;
                        ws.emit(OutboxRecord {
                            topic: "out".into(),
                            partition: None,
                            key: Some(emitted.to_string().into_bytes()),
                            value: Some(b"v".to_vec()),
                            headers: [("h", emitted.to_be_bytes())].into_iter().collect(),
                            timestamp: None,
                        });
                    }
                    offset += 1;
                    if changelog {
                        store.commit_with_changelog(&mut ws, "t", 0, offset, "t-changelog")
                    } else {
                        store.commit(&mut ws, "t", 0, offset)
                    }
                    .expect("commit");
                }
                OutboxStep::Take(n, ack) => {
                    let expected = store.pending_outbox(n.into()).expect("pending");
                    let taken = store.take_outbox(n.into()).expect("take");
                    prop_assert_eq!(&taken, &expected);
                    if ack {
                        let ids: Vec<i64> = taken.iter().map(|(id, _)| *id).collect();
                        store.delete_outbox(&ids).expect("delete");
                    }
                }
                OutboxStep::Reopen => {
                    drop(store);
                    store = PartitionStore::open(&path).expect("reopen");
                }
                OutboxStep::Reset => store.reset("t", 0).expect("reset"),
            }
        }
        // Everything left is handed out, then nothing.
        let left = store.pending_outbox(10_000).expect("pending");
        let mut taken = Vec::new();
        loop {
            let chunk = store.take_outbox(3).expect("take");
            if chunk.is_empty() {
                break;
            }
            let ids: Vec<i64> = chunk.iter().map(|(id, _)| *id).collect();
            store.delete_outbox(&ids).expect("delete");
            taken.extend(chunk);
        }
        prop_assert_eq!(taken, left);
    }
}

/// Rows of the outbox table of versions 3 to 5 (a row per record; headers a JSON array up to
/// version 4, a BLOB from 5) move into a run when the file is opened, and are sent first.
#[test]
fn outbox_rows_of_an_older_version_are_still_sent_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0.sqlite");
    drop(PartitionStore::open(&path).expect("open"));
    // Rows as schema version 5 wrote them, one of them by version 4, waiting when the new
    // version opens the file.
    let binary = crate::headers::Headers::from_iter([("b", [3])]);
    let conn = Connection::open(&path).expect("open");
    conn.execute_batch(
        "DROP TABLE outbox_runs;
         CREATE TABLE outbox (
             id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, partition INTEGER,
             key BLOB, value BLOB, headers TEXT NOT NULL, timestamp_ms INTEGER);
         INSERT INTO outbox (topic, partition, key, value, headers, timestamp_ms)
             VALUES ('out', NULL, x'6b', x'76', '[[\"h\",[1,2]]]', 7);
         PRAGMA user_version = 5;",
    )
    .expect("make it version 5");
    conn.execute(
        "INSERT INTO outbox (topic, partition, key, value, headers) VALUES ('out', 3, NULL, NULL, ?1)",
        [binary.as_bytes()],
    )
    .expect("insert");
    drop(conn);
    let waiting = || {
        let reader = StoreReader::open(&path).expect("reader");
        reader.progress("t", 0).expect("progress").outbox
    };
    assert_eq!(waiting(), 2, "counted in the old table");
    let store = PartitionStore::open(&path).expect("open");
    assert_eq!(waiting(), 2, "counted in their run");
    let old = [
        OutboxRecord {
            topic: "out".into(),
            partition: None,
            key: Some(b"k".to_vec()),
            value: Some(b"v".to_vec()),
            headers: [("h", [1, 2])].into_iter().collect(),
            timestamp: Some(7),
        },
        OutboxRecord {
            topic: "out".into(),
            partition: Some(3),
            key: None,
            value: None,
            headers: binary,
            timestamp: None,
        },
    ];
    let mut ws = WriteSet::default();
    let new = OutboxRecord {
        topic: "out".into(),
        partition: Some(1),
        key: None,
        value: None,
        headers: [("a", &[][..]), ("", &[0, 255])].into_iter().collect(),
        timestamp: None,
    };
    ws.emit(new.clone());
    store.commit(&mut ws, "t", 0, 1).expect("commit");
    let taken: Vec<OutboxRecord> = store
        .take_outbox(10)
        .expect("take")
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let expected: Vec<OutboxRecord> = old.iter().cloned().chain([new.clone()]).collect();
    assert_eq!(taken, expected, "the older rows first");
    let read: Vec<OutboxRecord> = PartitionStore::open(&path)
        .expect("reopen")
        .pending_outbox(10)
        .expect("pending")
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    assert_eq!(read, expected, "read back from their runs");
}

#[test]
fn runs_of_version_6_are_still_sent_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0.sqlite");
    drop(PartitionStore::open(&path).expect("open"));
    // A run as schema version 6 wrote it (form 1), waiting when the new version opens the file.
    let old = OutboxRecord {
        topic: "out".into(),
        partition: Some(2),
        key: Some(b"k".to_vec()),
        value: Some(b"v".to_vec()),
        headers: [(crate::wire::header::SOURCE_OFFSET, "5"), ("x", "y")]
            .into_iter()
            .collect(),
        timestamp: Some(9),
    };
    let conn = Connection::open(&path).expect("open");
    conn.execute(
        crate::schema::INSERT_OUTBOX_RUN,
        rusqlite::params![1, crate::outbox_run::format_1(std::slice::from_ref(&old))],
    )
    .expect("insert");
    conn.execute_batch("PRAGMA user_version = 6;")
        .expect("make it version 6");
    drop(conn);
    let store = PartitionStore::open(&path).expect("open");
    let version: i32 = Connection::open(&path)
        .expect("open")
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION);
    let new = OutboxRecord {
        topic: "out".into(),
        partition: None,
        key: None,
        value: Some(b"w".to_vec()),
        headers: [(crate::wire::header::SOURCE_OFFSET, "6")]
            .into_iter()
            .collect(),
        timestamp: None,
    };
    let mut ws = WriteSet::default();
    ws.emit(new.clone());
    store.commit(&mut ws, "t", 0, 1).expect("commit");
    let records = |taken: Vec<(i64, OutboxRecord)>| -> Vec<OutboxRecord> {
        taken.into_iter().map(|(_, r)| r).collect()
    };
    let expected = vec![old, new];
    assert_eq!(
        records(store.take_outbox(10).expect("take")),
        expected,
        "the older run first"
    );
    let read = PartitionStore::open(&path)
        .expect("reopen")
        .pending_outbox(10)
        .expect("pending");
    assert_eq!(records(read), expected, "read back from both forms");
}

proptest! {
    #[test]
    fn outbox_headers_read_back_as_written(
        headers in prop::collection::vec((".{0,8}", prop::collection::vec(any::<u8>(), 0..12)), 0..6),
    ) {
        let written: crate::headers::Headers = headers.iter().cloned().collect();
        let encoded = written.as_bytes().to_vec();
        let read = crate::headers::Headers::from_bytes(encoded.clone()).expect("decode");
        let pairs: Vec<(String, Vec<u8>)> =
            read.iter().map(|(k, v)| (k.to_owned(), v.to_vec())).collect();
        prop_assert_eq!(pairs, headers.clone());
        prop_assert_eq!(read.len(), headers.len());
        if !encoded.is_empty() {
            // Cut short anywhere: an error, or fewer headers (cut between two), never others.
            for cut in 0..encoded.len() {
                if let Ok(h) = crate::headers::Headers::from_bytes(encoded[..cut].to_vec()) {
                    prop_assert!(h.len() < headers.len(), "{:?}", h);
                    prop_assert!(h.iter().zip(&headers).all(|((k, v), (hk, hv))| k == hk && v == &hv[..]));
                }
            }
        }
    }
}

/// A batch commits while the outbox of the one before is being sent (the partition task does
/// both at once): a hand-out that reads SQLite and a commit that adds to the tail in memory
/// must not wait on each other for ever.
#[test]
fn a_commit_and_a_hand_out_at_once_never_deadlock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(PartitionStore::open(dir.path().join("0.sqlite")).expect("open"));
    let (done, finished) = std::sync::mpsc::channel();
    let committer = {
        let (store, done) = (Arc::clone(&store), done.clone());
        std::thread::spawn(move || {
            for offset in 1..=2_000 {
                let mut ws = WriteSet::default();
                ws.emit(OutboxRecord {
                    topic: "out".into(),
                    partition: None,
                    key: None,
                    value: Some(b"v".to_vec()),
                    headers: crate::headers::Headers::default(),
                    timestamp: None,
                });
                store.commit(&mut ws, "t", 0, offset).expect("commit");
            }
            let _ = done.send("committer");
        })
    };
    let taker = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || {
            for _ in 0..2_000 {
                // Never acknowledged: every hand-out reads SQLite again.
                store.take_outbox(1).expect("take");
            }
            let _ = done.send("taker");
        })
    };
    for _ in 0..2 {
        let who = finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("a commit and a hand-out deadlocked (no thread finished within 60 s)");
        eprintln!("{who} finished");
    }
    committer.join().expect("committer");
    taker.join().expect("taker");
}

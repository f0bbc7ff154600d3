//! Flow control and progress of one owned partition, shared by the consumer thread (which
//! fills the partition's queue, pauses and resumes it, and commits its offset to Kafka), the
//! partition's task (which drains the queue and commits batches) and the metrics endpoint.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::inbound::Inbound;
use crate::observe::PartitionRow;
use crate::stop::StopSignal;
use crate::wall_clock::now_ms;

/// One owned partition's flow: queue depth and pause state, stop signal, committed offset,
/// watermarks and counters.
#[derive(Debug)]
pub(crate) struct PartitionFlow {
    stop: Arc<StopSignal>,
    capacity: usize,
    /// The queue's bound in bytes ([`Inbound::weight`]).
    capacity_bytes: usize,
    /// Records handed to the task and not yet taken into a batch.
    queued: AtomicUsize,
    /// Their bytes.
    queued_bytes: AtomicUsize,
    /// Set by the consumer thread while the partition is paused.
    paused: AtomicBool,
    /// True until the task has its store ready (restored from the changelog if need be) and
    /// knows where to start.
    restoring: AtomicBool,
    /// The next offset whose batch is durable in SQLite and whose outbox is acknowledged
    /// (what Kafka may be told); -1 while unknown.
    committed: AtomicI64,
    /// What the consumer thread last committed to Kafka; -1 for nothing.
    sent_to_kafka: AtomicI64,
    /// The partition's watermarks as librdkafka last learned them from fetch responses.
    high_watermark: AtomicI64,
    low_watermark: AtomicI64,
    /// Timestamp (ms) of the oldest record taken but not yet committed; 0 when none.
    oldest_pending_ms: AtomicI64,
    /// Records committed since the partition was assigned here.
    processed: AtomicU64,
    /// Records of those sent to the dead-letter topic.
    dead_letters: AtomicU64,
    /// When the last batch was committed (ms since the epoch); 0 before the first.
    last_commit_ms: AtomicI64,
    /// The partition's committed event-time watermark (ms); `i64::MIN` while it has none.
    event_watermark_ms: AtomicI64,
    /// The offset after the last record handed over by the consumer (where fetching stands);
    /// -1 while none was.
    fetched_to: AtomicI64,
    /// When a record of the partition was last handed over (or it was assigned), in ms.
    last_delivery_ms: AtomicI64,
    /// Why the partition cannot be read, while records wait that never arrive.
    unreadable: Mutex<Option<String>>,
    /// Why the broker rejects the partition's committed emits for good, while it does.
    emits_rejected: Mutex<Option<String>>,
}

impl PartitionFlow {
    /// A partition whose queue holds `capacity` records of at most `capacity_bytes` together,
    /// starting at `next_offset` if known; `restoring` while its task still prepares its store.
    pub(crate) fn new(
        (capacity, capacity_bytes): (usize, usize),
        next_offset: Option<i64>,
        restoring: bool,
    ) -> Self {
        Self {
            stop: Arc::default(),
            capacity,
            capacity_bytes,
            queued: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
            restoring: AtomicBool::new(restoring),
            committed: AtomicI64::new(next_offset.unwrap_or(-1)),
            sent_to_kafka: AtomicI64::new(next_offset.unwrap_or(-1)),
            high_watermark: AtomicI64::new(-1),
            low_watermark: AtomicI64::new(-1),
            oldest_pending_ms: AtomicI64::new(0),
            processed: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            last_commit_ms: AtomicI64::new(0),
            event_watermark_ms: AtomicI64::new(i64::MIN),
            fetched_to: AtomicI64::new(next_offset.unwrap_or(-1)),
            last_delivery_ms: AtomicI64::new(now_ms()),
            unreadable: Mutex::new(None),
            emits_rejected: Mutex::new(None),
        }
    }

    // The stop signal.

    pub(crate) fn stop_signal(&self) -> &Arc<StopSignal> {
        &self.stop
    }

    /// Asks the task to finish its current batch and stop.
    pub(crate) fn request_stop(&self) {
        self.stop.request();
    }

    // The queue, seen from the consumer thread.

    /// How many of `run`'s first records fit in the queue now (by count and by bytes; an
    /// empty queue takes one record however big).
    pub(crate) fn fits(&self, run: &[Inbound]) -> usize {
        let queued = self.queued.load(Ordering::SeqCst);
        let mut bytes = self.queued_bytes.load(Ordering::SeqCst);
        let most = self.capacity.saturating_sub(queued).min(run.len());
        let mut n = 0;
        for record in &run[..most] {
            bytes += record.weight();
            if bytes > self.capacity_bytes && queued + n > 0 {
                break;
            }
            n += 1;
        }
        n
    }

    /// `chunk` was handed to the task.
    pub(crate) fn queued_more(&self, chunk: &[Inbound]) {
        self.queued.fetch_add(chunk.len(), Ordering::SeqCst);
        self.queued_bytes.fetch_add(weight(chunk), Ordering::SeqCst);
    }

    /// Records up to `last_offset` were taken from the consumer (queued or held back). Returns
    /// the reason the partition had been unreadable, if it was: it is readable again.
    pub(crate) fn delivered(&self, last_offset: i64) -> Option<String> {
        self.fetched_to
            .fetch_max(last_offset + 1, Ordering::Relaxed);
        self.last_delivery_ms.store(now_ms(), Ordering::Relaxed);
        self.unreadable().take()
    }

    /// If records wait beyond where fetching stands and none arrived for `after_ms` although
    /// the partition is neither paused nor restoring, how many wait and since when (ms).
    pub(crate) fn stalled(&self, now_ms: i64, after_ms: i64) -> Option<(i64, i64)> {
        if self.is_paused() || self.is_restoring() {
            return None;
        }
        let idle = now_ms - self.last_delivery_ms.load(Ordering::Relaxed);
        let high = self.high_watermark.load(Ordering::Relaxed);
        let from = match self.fetched_to.load(Ordering::Relaxed) {
            n if n >= 0 => n,
            _ => self.low_watermark.load(Ordering::Relaxed).max(0),
        };
        (idle >= after_ms && high > from).then_some((high - from, idle))
    }

    /// Notes why the broker rejects the partition's emits for good (`None`: it takes them
    /// again); true if that changed.
    pub(crate) fn set_emits_rejected(&self, reason: Option<String>) -> bool {
        let mut current = self
            .emits_rejected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = current.is_some() != reason.is_some();
        *current = reason;
        changed
    }

    /// Marks the partition unreadable for `reason`; false if it was already.
    pub(crate) fn set_unreadable(&self, reason: String) -> bool {
        let mut current = self.unreadable();
        let first = current.is_none();
        *current = Some(reason);
        first
    }

    fn unreadable(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.unreadable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The queue drained to its low-water mark (half its capacity, in records and in bytes):
    /// time to resume.
    pub(crate) fn drained(&self) -> bool {
        self.queued.load(Ordering::SeqCst) <= self.capacity / 2
            && self.queued_bytes.load(Ordering::SeqCst) <= self.capacity_bytes / 2
    }

    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub(crate) fn is_restoring(&self) -> bool {
        self.restoring.load(Ordering::SeqCst)
    }

    /// The offset to commit to Kafka, if it moved since the last call.
    pub(crate) fn take_kafka_commit(&self) -> Option<i64> {
        let committed = self.committed.load(Ordering::SeqCst);
        let sent = self.sent_to_kafka.swap(committed, Ordering::SeqCst);
        (committed >= 0 && committed != sent).then_some(committed)
    }

    pub(crate) fn set_watermarks(&self, low: i64, high: i64) {
        if high >= 0 {
            self.high_watermark.store(high, Ordering::Relaxed);
        }
        if low >= 0 {
            self.low_watermark.store(low, Ordering::Relaxed);
        }
    }

    // The queue and progress, seen from the task.

    /// `chunk` was taken out of the queue into a batch.
    pub(crate) fn taken(&self, chunk: &[Inbound]) {
        self.queued.fetch_sub(chunk.len(), Ordering::SeqCst);
        self.queued_bytes.fetch_sub(weight(chunk), Ordering::SeqCst);
    }

    /// The store is ready and processing starts at `next_offset` (if known).
    pub(crate) fn ready(&self, next_offset: Option<i64>) {
        if let Some(n) = next_offset {
            self.committed.store(n, Ordering::SeqCst);
        }
        self.restoring.store(false, Ordering::SeqCst);
    }

    /// A batch whose oldest record has timestamp `oldest_ms` is being processed.
    pub(crate) fn batch_started(&self, oldest_ms: Option<i64>) {
        self.oldest_pending_ms
            .store(oldest_ms.unwrap_or(0), Ordering::Relaxed);
    }

    /// `done` records are committed to SQLite, `dead_letters` of them as dead letters.
    pub(crate) fn batch_committed(&self, done: u64, dead_letters: u64) {
        self.processed.fetch_add(done, Ordering::Relaxed);
        self.dead_letters.fetch_add(dead_letters, Ordering::Relaxed);
        self.last_commit_ms.store(now_ms(), Ordering::Relaxed);
        self.oldest_pending_ms.store(0, Ordering::Relaxed);
    }

    /// The partition's event-time watermark as committed.
    pub(crate) fn set_event_watermark(&self, watermark: Option<i64>) {
        self.event_watermark_ms
            .store(watermark.unwrap_or(i64::MIN), Ordering::Relaxed);
    }

    /// Everything before `next` is committed and its outbox acknowledged: Kafka may be told.
    pub(crate) fn set_committed(&self, next: i64) {
        self.committed.store(next, Ordering::SeqCst);
    }

    pub(crate) fn committed_offset(&self) -> Option<i64> {
        Some(self.committed.load(Ordering::SeqCst)).filter(|o| *o >= 0)
    }

    // What the endpoint shows.

    /// High watermark minus the next offset to process, once both are known.
    pub(crate) fn lag(&self) -> Option<i64> {
        let high = self.high_watermark.load(Ordering::Relaxed);
        if high < 0 {
            return None;
        }
        let next = match self.committed.load(Ordering::Relaxed) {
            n if n >= 0 => n,
            _ => self.low_watermark.load(Ordering::Relaxed).max(0),
        };
        Some((high - next).max(0))
    }

    /// The partition's row for the endpoint; `overflow` records wait on the consumer thread.
    pub(crate) fn row(
        &self,
        topic: &str,
        partition: i32,
        overflow: usize,
        now_ms: i64,
    ) -> PartitionRow {
        let lag = self.lag();
        let lag_seconds = match self.oldest_pending_ms.load(Ordering::Relaxed) {
            ts if ts > 0 && lag.unwrap_or(0) > 0 => ((now_ms - ts).max(0) as f64) / 1000.0,
            _ => 0.0,
        };
        PartitionRow {
            topic: topic.to_owned(),
            partition,
            lag,
            lag_seconds,
            depth: self.queued.load(Ordering::Relaxed) + overflow,
            capacity: self.capacity,
            paused: self.is_paused(),
            restoring: self.is_restoring(),
            unreadable: self.unreadable().clone(),
            emits_rejected: self
                .emits_rejected
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            processed: self.processed.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
            last_commit_ms: Some(self.last_commit_ms.load(Ordering::Relaxed)).filter(|t| *t > 0),
            event_watermark_ms: Some(self.event_watermark_ms.load(Ordering::Relaxed))
                .filter(|w| *w != i64::MIN),
        }
    }
}

fn weight(chunk: &[Inbound]) -> usize {
    chunk.iter().map(Inbound::weight).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize, payload_bytes: usize) -> Vec<Inbound> {
        let payload = vec![b'x'; payload_bytes];
        (0..n)
            .map(|i| Inbound::new(Arc::from("t"), 0, i as i64, None, None, Some(&payload), &[]))
            .collect()
    }

    #[test]
    fn the_queue_is_bounded_by_records_and_by_bytes() {
        // 10 records, or 10 KiB: records of 1 KiB fill the bytes first.
        let flow = PartitionFlow::new((10, 10 << 10), None, false);
        let big = records(20, 1000);
        let fit = flow.fits(&big);
        assert!(
            (8..10).contains(&fit),
            "{fit} records of 1000 bytes (+ overhead) fit in 10 KiB"
        );
        flow.queued_more(&big[..fit]);
        assert_eq!(flow.fits(&big[fit..]), 0, "full by bytes");
        assert!(!flow.drained());
        flow.taken(&big[..fit / 2 + 1]);
        assert!(flow.drained(), "below half of both bounds");
        flow.taken(&big[fit / 2 + 1..fit]);

        // Small records fill the count first.
        let small = records(20, 10);
        assert_eq!(flow.fits(&small), 10);
        flow.queued_more(&small[..10]);
        assert_eq!(flow.fits(&small), 0);
        assert!(!flow.drained());
        flow.taken(&small[..5]);
        assert!(flow.drained());
        flow.taken(&small[5..10]);

        // A record bigger than the whole bound still goes through, alone.
        let huge = records(2, 64 << 10);
        assert_eq!(flow.fits(&huge), 1);
        flow.queued_more(&huge[..1]);
        assert_eq!(flow.fits(&huge[1..]), 0);
    }
}

"""The bench's `quix` scenario: Quix Streams doing weir-wordcount's word count.

Usage: wordcount.py BROKERS TOPIC GROUP STATE_DIR N

Counts the words of TOPIC's records in Quix Streams' RocksDB state (default settings:
at-least-once, 5 s commit interval; no changelog topics, as weir-wordcount has none) until it
has read N records or processed for RUN_SECONDS, whichever comes first, then stops the app,
which commits. Prints one JSON line like the Rust scenarios.

Timed like weir: from the first record to the end of the commit that covers the last one (the
app's shutdown after that commit is not counted, as weir's graceful stop is not). Latency is
the producer timestamp to the end of the commit that covers the record. The run lasts at least
ten commit intervals (or all N records), so the final commit's wait is under 10% of it.
"""

import json
import resource
import sys
import time

from quixstreams import Application
from quixstreams.checkpointing import checkpoint

# Ten commit intervals (5 s by default).
RUN_SECONDS = 50.0


def main() -> None:
    brokers, topic_name, group, state_dir, n = sys.argv[1:6]
    n = int(n)
    app = Application(
        broker_address=brokers,
        consumer_group=group,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        use_changelog_topics=False,
        loglevel="WARNING",
    )
    topic = app.topic(topic_name, value_deserializer="str", key_deserializer="bytes")
    seen = {"n": 0, "first": None, "last_commit": None, "stopping": False}
    # Timestamps of records processed since the last commit; a commit settles them.
    pending = []
    latencies = []

    commit = checkpoint.Checkpoint.commit

    def timed_commit(self, *args, **kwargs):
        result = commit(self, *args, **kwargs)
        now = time.monotonic()
        now_ms = time.time() * 1000
        if pending:
            latencies.extend(int(now_ms - ts) for ts in pending)
            pending.clear()
            seen["last_commit"] = now
        return result

    checkpoint.Checkpoint.commit = timed_commit

    def count(line: str, state) -> None:
        for word in line.split():
            word = "".join(c for c in word if c.isalnum()).lower()
            if word:
                state.set(word, state.get(word, 0) + 1)

    def note(_value, _key, timestamp, _headers) -> None:
        if seen["stopping"]:
            return
        if seen["first"] is None:
            seen["first"] = time.monotonic()
        pending.append(timestamp)
        seen["n"] += 1
        if seen["n"] >= n or time.monotonic() - seen["first"] >= RUN_SECONDS:
            seen["stopping"] = True
            app.stop()

    sdf = app.dataframe(topic)
    sdf = sdf.update(count, stateful=True)
    sdf = sdf.update(note, metadata=True)
    app.run()
    done = seen["last_commit"] or time.monotonic()
    seconds = max(done - (seen["first"] or done), 1e-9)
    lat = sorted(latencies)
    pick = lambda q: lat[int((len(lat) - 1) * q)] if lat else 0
    print(
        json.dumps(
            {
                "scenario": "quix",
                "messages": seen["n"],
                "seconds": seconds,
                "messages_per_second": seen["n"] / seconds,
                "p50_latency_ms": pick(0.5),
                "p99_latency_ms": pick(0.99),
                "p999_latency_ms": pick(0.999),
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()

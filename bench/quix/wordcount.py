"""The bench's `quix` scenario: Quix Streams doing weir-wordcount's word count.

Usage: wordcount.py BROKERS TOPIC GROUP STATE_DIR N

Counts the words of the first N records of TOPIC in Quix Streams' RocksDB state (default
settings: at-least-once, 5 s commit interval; no changelog topics, as weir-wordcount has
none), then stops the app, which commits. Prints one JSON line like the Rust scenarios:
throughput is timed from the first record to the end of that final commit; latency is the
producer timestamp to the commit that covers the record.
"""

import json
import resource
import sys
import time

from quixstreams import Application


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
    seen = {"n": 0, "first": None}
    timestamps = []

    def count(line: str, state) -> None:
        for word in line.split():
            word = "".join(c for c in word if c.isalnum()).lower()
            if word:
                state.set(word, state.get(word, 0) + 1)

    def note(_value, _key, timestamp, _headers) -> None:
        if seen["first"] is None:
            seen["first"] = time.monotonic()
        timestamps.append(timestamp)
        seen["n"] += 1
        if seen["n"] >= n:
            app.stop()

    sdf = app.dataframe(topic)
    sdf = sdf.update(count, stateful=True)
    sdf = sdf.update(note, metadata=True)
    app.run()
    # app.run() returns after the final commit of the stop.
    done = time.monotonic()
    now_ms = time.time() * 1000
    seconds = max(done - (seen["first"] or done), 1e-9)
    lat = sorted(int(now_ms - ts) for ts in timestamps)
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
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()

"""Produces test records with the Python confluent-kafka client (not weir's librdkafka build).

    produce.py BOOTSTRAP TOPIC COUNT [--codec none|gzip|snappy|lz4|zstd] [--keys N]
               [--start N] [--set key=value ...]

Record i has key "k{i % keys}" and value "v{i}". Prints the number acknowledged; exits 1 on
any delivery error.
"""

import argparse
import sys

from confluent_kafka import Producer


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("bootstrap")
    p.add_argument("topic")
    p.add_argument("count", type=int)
    p.add_argument("--codec", default="none")
    p.add_argument("--keys", type=int, default=50)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="librdkafka property key=value")
    a = p.parse_args()
    conf = {
        "bootstrap.servers": a.bootstrap,
        "compression.type": a.codec,
        "linger.ms": 20,
        "enable.idempotence": False,
        "message.timeout.ms": 60000,
    }
    for kv in a.set:
        k, _, v = kv.partition("=")
        conf[k] = v
    producer = Producer(conf)
    errors = []
    acked = [0]

    def on_delivery(err, _msg):
        if err is not None:
            errors.append(str(err))
        else:
            acked[0] += 1

    for i in range(a.start, a.start + a.count):
        while True:
            try:
                producer.produce(a.topic, key=f"k{i % a.keys}", value=f"v{i}", on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(60)
    if errors or left:
        print(f"delivery failed: {left} not flushed, errors: {errors[:5]}", file=sys.stderr)
        return 1
    print(acked[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())

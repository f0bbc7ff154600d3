"""Publishes to and reads JetStream streams with the Python nats-py client (not weir's own).

    nats_client.py publish URL TOPIC COUNT [--keys N]
        Record i goes to subject TOPIC.k{i % keys} with value v{i}, header "origin: python"
        and Nats-Msg-Id py-{i}; record 0 is published twice (the stream drops the second as
        a duplicate). Prints the number of distinct records the stream acknowledged.
    nats_client.py read URL STREAM COUNT [--wait SECONDS]
        Reads STREAM from its start until COUNT messages came (or SECONDS passed) and prints
        one JSON object per message: subject, data, headers, sequence.
"""

import argparse
import asyncio
import json
import sys

import nats


async def publish(a) -> int:
    nc = await nats.connect(a.url)
    js = nc.jetstream()
    acked = set()
    for i in range(a.count):
        for _ in range(2 if i == 0 else 1):
            ack = await js.publish(
                f"{a.topic}.k{i % a.keys}",
                f"v{i}".encode(),
                headers={"origin": "python", "Nats-Msg-Id": f"py-{i}"},
            )
            if not ack.duplicate:
                acked.add(ack.seq)
    await nc.close()
    print(len(acked))
    return 0


async def read(a) -> int:
    nc = await nats.connect(a.url)
    js = nc.jetstream()
    sub = await js.subscribe(f"{a.stream}.>", ordered_consumer=True, stream=a.stream)
    got = 0
    deadline = asyncio.get_running_loop().time() + a.wait
    while got < a.count:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            break
        try:
            msg = await sub.next_msg(timeout=left)
        except nats.errors.TimeoutError:
            break
        got += 1
        print(json.dumps({
            "subject": msg.subject,
            "data": msg.data.decode(errors="replace"),
            "headers": dict(msg.headers or {}),
            "sequence": msg.metadata.sequence.stream,
        }))
    await nc.close()
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("publish")
    pp.add_argument("url")
    pp.add_argument("topic")
    pp.add_argument("count", type=int)
    pp.add_argument("--keys", type=int, default=50)
    pr = sub.add_parser("read")
    pr.add_argument("url")
    pr.add_argument("stream")
    pr.add_argument("count", type=int)
    pr.add_argument("--wait", type=float, default=30)
    a = p.parse_args()
    return asyncio.run(publish(a) if a.command == "publish" else read(a))


if __name__ == "__main__":
    sys.exit(main())

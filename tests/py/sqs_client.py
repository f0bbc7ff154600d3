"""Sends to and reads SQS with the Python boto3 client (not weir's own), at a local endpoint.

    sqs_client.py create ENDPOINT QUEUE [--visibility SECONDS]
        Creates QUEUE (FIFO for a .fifo name) with that visibility timeout.
    sqs_client.py send ENDPOINT QUEUE START COUNT [--keys N]
        Record i (START <= i < START+COUNT) goes to QUEUE with attribute key = k{i % keys}, body
        v{i}, attribute origin = python, ten a request (FIFO: group k{i % keys}, deduplication
        id py-{i}). Prints the number SQS took.
    sqs_client.py records ENDPOINT QUEUE JSON
        Sends each [key, value] of the JSON array as above (FIFO: deduplication id
        py-QUEUE-{i}), in order. Prints the number SQS took.
    sqs_client.py depth ENDPOINT QUEUE...
        Prints each queue's visible and not-visible message counts as JSON (null: no queue).
    sqs_client.py attributes ENDPOINT QUEUE
        Prints the queue's attributes as JSON.
    sqs_client.py read ENDPOINT QUEUE COUNT [--wait SECONDS]
        Receives and deletes up to COUNT messages (it stops once none came for SECONDS) and
        prints one JSON object per message: body, message attributes (text; Binary ones as
        lists of bytes; weir's packed `weir.headers` unpacked under "headers").
    sqs_client.py race ENDPOINT QUEUE COUNT [--senders N] [--receivers N]
        Creates QUEUE (visibility 30 s) and has N senders send COUNT messages each, ten a
        request, while N receivers receive and delete them at once, each request tried once.
        When every message came (or 30 s went by) prints as JSON: sent, received (distinct
        bodies), twice (bodies received more than once), errors (requests that failed, and
        delete entries refused), and the queue's visible and not-visible counts (a delete
        that was answered and undone leaves its message there).
"""

import argparse
import json
import sys
import threading
import time

import boto3
from botocore.config import Config


def client(endpoint, config=None):
    return boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=config,
    )


def url_of(sqs, queue):
    return sqs.get_queue_url(QueueName=queue)["QueueUrl"]


def create(a) -> int:
    sqs = client(a.endpoint)
    attributes = {"VisibilityTimeout": str(a.visibility)}
    if a.queue.endswith(".fifo"):
        attributes["FifoQueue"] = "true"
    sqs.create_queue(QueueName=a.queue, Attributes=attributes)
    return 0


def send_all(a, items) -> int:
    """Sends (i, dedup id, key, value) items ten a request; the number SQS took."""
    sqs = client(a.endpoint)
    url = url_of(sqs, a.queue)
    fifo = a.queue.endswith(".fifo")
    took = 0
    for start in range(0, len(items), 10):
        entries = []
        for i, dedup, key, value in items[start : start + 10]:
            entry = {
                "Id": str(i),
                "MessageBody": value,
                "MessageAttributes": {
                    "key": {"DataType": "String", "StringValue": key},
                    "origin": {"DataType": "String", "StringValue": "python"},
                },
            }
            if fifo:
                entry["MessageGroupId"] = key
                entry["MessageDeduplicationId"] = dedup
            entries.append(entry)
        r = sqs.send_message_batch(QueueUrl=url, Entries=entries)
        if r.get("Failed"):
            print(json.dumps(r["Failed"]), file=sys.stderr)
        took += len(r.get("Successful", []))
    print(took)
    return 0


def send(a) -> int:
    items = [(i, f"py-{i}", f"k{i % a.keys}", f"v{i}") for i in range(a.start, a.start + a.count)]
    return send_all(a, items)


def records(a) -> int:
    items = [(i, f"py-{a.queue}-{i}", k, v) for i, (k, v) in enumerate(json.loads(a.records))]
    return send_all(a, items)


def depth(a) -> int:
    sqs = client(a.endpoint)
    out = {}
    for q in a.queues:
        try:
            attrs = sqs.get_queue_attributes(
                QueueUrl=url_of(sqs, q),
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            )["Attributes"]
            out[q] = {
                "visible": int(attrs["ApproximateNumberOfMessages"]),
                "not_visible": int(attrs["ApproximateNumberOfMessagesNotVisible"]),
            }
        except sqs.exceptions.QueueDoesNotExist:
            out[q] = None
    print(json.dumps(out))
    return 0


def attributes(a) -> int:
    sqs = client(a.endpoint)
    attrs = sqs.get_queue_attributes(QueueUrl=url_of(sqs, a.queue), AttributeNames=["All"])
    print(json.dumps(attrs["Attributes"]))
    return 0


def unpack(data):
    """weir's packed headers (4-byte name length, name, 4-byte value length + 1, value)."""
    headers, at = {}, 0
    while at < len(data):
        n = int.from_bytes(data[at : at + 4], "big")
        name = data[at + 4 : at + 4 + n].decode()
        at += 4 + n
        v = int.from_bytes(data[at : at + 4], "big")
        at += 4
        headers[name] = None if v == 0 else data[at : at + v - 1].decode(errors="replace")
        at += max(v - 1, 0)
    return headers


def read(a) -> int:
    sqs = client(a.endpoint)
    url = url_of(sqs, a.queue)
    taken, last = 0, time.monotonic()
    while taken < a.count and time.monotonic() - last < a.wait:
        r = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=min(10, a.count - taken),
            WaitTimeSeconds=0,
            MessageAttributeNames=["All"],
            AttributeNames=["All"],
        )
        messages = r.get("Messages", [])
        if not messages:
            time.sleep(0.05)
            continue
        last = time.monotonic()
        for m in messages:
            attrs = {}
            for name, v in m.get("MessageAttributes", {}).items():
                if v["DataType"].startswith("Binary"):
                    attrs[name] = list(v["BinaryValue"])
                else:
                    attrs[name] = v["StringValue"]
            out = {"body": m["Body"], "attributes": attrs, "message_id": m["MessageId"]}
            if "weir.headers" in attrs:
                out["headers"] = unpack(bytes(attrs["weir.headers"]))
            print(json.dumps(out))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            taken += 1
    return 0


def race(a) -> int:
    once = Config(retries={"max_attempts": 1, "mode": "standard"})
    url = client(a.endpoint).create_queue(
        QueueName=a.queue, Attributes={"VisibilityTimeout": "30"}
    )["QueueUrl"]
    lock = threading.Lock()
    seen = {}
    errors = []
    sending = [a.senders]

    def failed(e):
        with lock:
            errors.append(str(e))

    def sender(n):
        sqs = client(a.endpoint, once)
        for start in range(0, a.count, 10):
            entries = [
                {"Id": str(i), "MessageBody": f"s{n}-{start + i}"}
                for i in range(min(10, a.count - start))
            ]
            try:
                sent = sqs.send_message_batch(QueueUrl=url, Entries=entries)
                errors.extend(sent.get("Failed", []))
            except Exception as e:
                failed(e)
        with lock:
            sending[0] -= 1

    def receiver():
        sqs = client(a.endpoint, once)
        deadline = time.time() + 30
        while time.time() < deadline:
            with lock:
                if sending[0] == 0 and len(seen) >= a.senders * a.count:
                    return
            try:
                got = sqs.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1
                ).get("Messages", [])
                with lock:
                    for m in got:
                        seen[m["Body"]] = seen.get(m["Body"], 0) + 1
                if got:
                    done = sqs.delete_message_batch(
                        QueueUrl=url,
                        Entries=[
                            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                            for i, m in enumerate(got)
                        ],
                    )
                    with lock:
                        errors.extend(done.get("Failed", []))
            except Exception as e:
                failed(e)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(a.senders)]
    threads += [threading.Thread(target=receiver) for _ in range(a.receivers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    left = client(a.endpoint).get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
        ],
    )["Attributes"]
    print(
        json.dumps(
            {
                "sent": a.senders * a.count,
                "received": len(seen),
                "twice": sum(1 for n in seen.values() if n > 1),
                "errors": [str(e) for e in errors],
                "visible": int(left["ApproximateNumberOfMessages"]),
                "not_visible": int(left["ApproximateNumberOfMessagesNotVisible"]),
            }
        )
    )
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create")
    c.add_argument("endpoint")
    c.add_argument("queue")
    c.add_argument("--visibility", type=int, default=30)
    s = sub.add_parser("send")
    s.add_argument("endpoint")
    s.add_argument("queue")
    s.add_argument("start", type=int)
    s.add_argument("count", type=int)
    s.add_argument("--keys", type=int, default=50)
    r = sub.add_parser("records")
    r.add_argument("endpoint")
    r.add_argument("queue")
    r.add_argument("records")
    d = sub.add_parser("depth")
    d.add_argument("endpoint")
    d.add_argument("queues", nargs="+")
    t = sub.add_parser("attributes")
    t.add_argument("endpoint")
    t.add_argument("queue")
    rd = sub.add_parser("read")
    rd.add_argument("endpoint")
    rd.add_argument("queue")
    rd.add_argument("count", type=int)
    rd.add_argument("--wait", type=float, default=2.0)
    rc = sub.add_parser("race")
    rc.add_argument("endpoint")
    rc.add_argument("queue")
    rc.add_argument("count", type=int)
    rc.add_argument("--senders", type=int, default=3)
    rc.add_argument("--receivers", type=int, default=8)
    a = p.parse_args()
    return {
        "create": create,
        "send": send,
        "records": records,
        "depth": depth,
        "attributes": attributes,
        "read": read,
        "race": race,
    }[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())

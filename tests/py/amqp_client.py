"""Publishes to and reads RabbitMQ with the Python pika client (not weir's own).

    amqp_client.py publish URL EXCHANGE START COUNT [--keys N] [--no-id] [--nacks]
        Record i (START <= i < START+COUNT) goes to exchange EXCHANGE with routing key
        k{i % keys}, body v{i}, header "origin: python", message_id py-{i}, persistent, with
        publisher confirms. Prints the number of records the broker confirmed (with --nacks, a
        record the broker refuses is counted out instead of failing the run).
    amqp_client.py records URL EXCHANGE JSON [--headers JSON]
        Publishes each [key, value] of the JSON array as above, record i with message_id
        py-EXCHANGE-{i} and, besides "origin", the headers of the JSON object given (a list of
        objects is an AMQP array of tables). Prints the number confirmed.
    amqp_client.py stream URL STREAM
        Declares the stream STREAM (x-queue-type: stream) and the fanout exchange STREAM-in
        bound to it: what is published there keeps its routing key (the record's key).
    amqp_client.py depth URL QUEUE...
        Prints each queue's ready and unacknowledged message counts as JSON.
    amqp_client.py read URL QUEUE COUNT [--wait SECONDS]
        Takes up to COUNT messages from QUEUE (acknowledging them; it stops once none came for
        SECONDS) and prints one JSON object per message: routing key, body, headers,
        message_id.
"""

import argparse
import json
import sys
import time

import pika


def connect(url):
    return pika.BlockingConnection(pika.URLParameters(url))


def publish(a) -> int:
    conn = connect(a.url)
    ch = conn.channel()
    ch.confirm_delivery()
    confirmed = 0
    for i in range(a.start, a.start + a.count):
        props = pika.BasicProperties(
            delivery_mode=2,
            headers={"origin": "python"},
            message_id=None if a.no_id else f"py-{i}",
            timestamp=int(time.time()),
        )
        try:
            ch.basic_publish(a.exchange, f"k{i % a.keys}", f"v{i}".encode(), props)
        except pika.exceptions.NackError:
            if not a.nacks:
                raise
            continue
        confirmed += 1
    conn.close()
    print(confirmed)
    return 0


def records(a) -> int:
    conn = connect(a.url)
    ch = conn.channel()
    ch.confirm_delivery()
    confirmed = 0
    headers = {"origin": "python", **json.loads(a.headers)}
    for i, (key, value) in enumerate(json.loads(a.records)):
        props = pika.BasicProperties(
            delivery_mode=2,
            headers=headers,
            message_id=f"py-{a.exchange}-{i}",
            timestamp=int(time.time()),
        )
        ch.basic_publish(a.exchange, key, value.encode(), props)
        confirmed += 1
    conn.close()
    print(confirmed)
    return 0


def stream(a) -> int:
    conn = connect(a.url)
    ch = conn.channel()
    ch.queue_declare(a.stream, durable=True, arguments={"x-queue-type": "stream"})
    ch.exchange_declare(f"{a.stream}-in", exchange_type="fanout", durable=True)
    ch.queue_bind(a.stream, f"{a.stream}-in")
    conn.close()
    return 0


def depth(a) -> int:
    conn = connect(a.url)
    out = {}
    for q in a.queues:
        ch = conn.channel()
        ok = ch.queue_declare(q, passive=True)
        out[q] = ok.method.message_count
    conn.close()
    print(json.dumps(out))
    return 0


def read(a) -> int:
    conn = connect(a.url)
    ch = conn.channel()
    got = 0
    # (A consumer: quorum queues with single active consumer refuse basic.get.)
    for method, props, body in ch.consume(a.queue, inactivity_timeout=a.wait):
        if method is None:
            break
        ch.basic_ack(method.delivery_tag)
        headers = {
            k: (v.decode() if isinstance(v, bytes) else v) for k, v in (props.headers or {}).items()
        }
        print(json.dumps({
            "routing_key": method.routing_key,
            "body": body.decode(errors="replace"),
            "headers": headers,
            "message_id": props.message_id,
        }))
        got += 1
        if got >= a.count:
            break
    ch.cancel()
    conn.close()
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    pub = sub.add_parser("publish")
    pub.add_argument("url")
    pub.add_argument("exchange")
    pub.add_argument("start", type=int)
    pub.add_argument("count", type=int)
    pub.add_argument("--keys", type=int, default=50)
    pub.add_argument("--no-id", action="store_true")
    pub.add_argument("--nacks", action="store_true")
    rec = sub.add_parser("records")
    rec.add_argument("url")
    rec.add_argument("exchange")
    rec.add_argument("records")
    rec.add_argument("--headers", default="{}")
    st = sub.add_parser("stream")
    st.add_argument("url")
    st.add_argument("stream")
    d = sub.add_parser("depth")
    d.add_argument("url")
    d.add_argument("queues", nargs="+")
    r = sub.add_parser("read")
    r.add_argument("url")
    r.add_argument("queue")
    r.add_argument("count", type=int)
    r.add_argument("--wait", type=float, default=10.0)
    a = p.parse_args()
    return {
        "publish": publish, "records": records, "stream": stream, "depth": depth, "read": read,
    }[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())

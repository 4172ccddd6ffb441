"""An independent client (librdkafka, via confluent-kafka) for cross-checking streamlab.

    rdkafka_client.py topic TOPIC            -> {"partitions": n, "retention_ms": "…"}
    rdkafka_client.py read TOPIC             -> one JSON line per record, every partition, from the start
    rdkafka_client.py place TOPIC KEY…       -> {"KEY": partition} as librdkafka's murmur2 partitioner puts them
    rdkafka_client.py committed GROUP TOPIC  -> {"partition": committed offset}
    rdkafka_client.py updates TOPIC COUNT KEYS TOMBSTONE_PERCENT SEED KIND
                                            -> produces COUNT keyed updates (sales or sensor JSON) of
                                               KEYS keys, store-<k> / sensor-<k>, that share
                                               tombstones (null values); prints {"sent", "tombstones",
                                               "table": {key: value}}: each key's last value, keys
                                               whose last record is a tombstone left out
    rdkafka_client.py table TOPIC            -> reads every partition from the start and prints
                                               {"records": n, "table": {key: value}}: the newest
                                               record of each key by offset, tombstoned keys left out
    rdkafka_client.py member GROUP TOPIC [STRATEGY]
                                            -> joins GROUP (range assignor by default), prints
                                               {"assigned": [...]} / {"revoked": [...]} as they
                                               happen, reads nothing, commits nothing; leaves
                                               cleanly when stdin closes
"""
import json
import os
import sys

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

BROKERS = os.environ.get("STREAMLAB_BROKERS", "127.0.0.1:9092")


def partitions_of(topic):
    md = AdminClient({"bootstrap.servers": BROKERS}).list_topics(topic, timeout=10)
    return sorted(md.topics[topic].partitions)


def topic(name):
    admin = AdminClient({"bootstrap.servers": BROKERS})
    md = admin.list_topics(name, timeout=10)
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    print(json.dumps({
        "partitions": len(md.topics[name].partitions),
        "retention_ms": configs["retention.ms"].value,
    }))


def records(name, group):
    """Every record of every partition of NAME, from the start to the end."""
    consumer = Consumer({"bootstrap.servers": BROKERS, "group.id": group,
                         "enable.auto.commit": False, "enable.partition.eof": True})
    parts = partitions_of(name)
    consumer.assign([TopicPartition(name, p, 0) for p in parts])
    # Only end-of-partition events end the read: tansu 0.6 answers ListOffsets (which
    # get_watermark_offsets uses) with the base offset of the last batch, not the end.
    done = set()
    while len(done) < len(parts):
        msg = consumer.poll(10)
        if msg is None:
            raise SystemExit("timed out reading " + name)
        if msg.error():
            if msg.error().code() == -191:  # _PARTITION_EOF
                done.add(msg.partition())
                continue
            raise SystemExit(str(msg.error()))
        yield msg
    consumer.close()


def read(name):
    for msg in records(name, "xcheck-reader"):
        print(json.dumps({
            "partition": msg.partition(),
            "offset": msg.offset(),
            "key": msg.key().decode() if msg.key() is not None else None,
            "value": msg.value().decode(errors="replace") if msg.value() is not None else None,
            "timestamp": msg.timestamp()[1],
        }))


def update_value(rng, kind, key):
    """A value of KIND for KEY: an event's JSON fields, made here (not by streamlab)."""
    import datetime
    import uuid
    now = datetime.datetime.now(datetime.timezone.utc)
    ts = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if kind == "sales":
        return {"id": event_id, "ts": ts, "store_id": key,
                "amount_usd": round(rng.uniform(0.5, 500), 2),
                "channel": rng.choice(["online", "store", "mobile"])}
    return {"id": event_id, "sensor_id": key, "val": round(rng.gauss(21.5, 2.5), 2),
            "unit": "°C", "status": rng.choice(["ok", "ok", "ok", "warn", "fail"]), "ts": ts}


def updates(name, count, keys, tombstone_percent, seed, kind):
    import random
    rng = random.Random(int(seed))
    # One request in flight: each partition's records land in the order they are produced, so
    # the last one produced for a key is its newest.
    producer = Producer({"bootstrap.servers": BROKERS, "partitioner": "murmur2_random",
                         "max.in.flight.requests.per.connection": 1, "linger.ms": 5})
    failures = []

    def report(err, _msg):
        if err:
            failures.append(str(err))

    table, tombstones = {}, 0
    prefix = "store" if kind == "sales" else "sensor"
    for i in range(int(count)):
        key = f"{prefix}-{rng.randrange(int(keys))}"
        if rng.random() * 100 < float(tombstone_percent):
            value, tombstones = None, tombstones + 1
        else:
            value = update_value(rng, kind, key)
        payload = json.dumps(value).encode() if value is not None else None
        producer.produce(name, key=key.encode(), value=payload, on_delivery=report)
        table[key] = value
        if i % 1000 == 0:
            producer.poll(0)
    if producer.flush(60) or failures:
        raise SystemExit(f"not every update was delivered: {failures[:3]}")
    print(json.dumps({"sent": int(count), "tombstones": tombstones,
                      "table": {k: v for k, v in table.items() if v is not None}}))


def table_of(name):
    newest, read_count = {}, 0
    for msg in records(name, "xcheck-table"):
        read_count += 1
        key = msg.key().decode()
        seen = newest.get(key)
        if seen is None or (msg.partition(), msg.offset()) > seen[0]:
            value = json.loads(msg.value()) if msg.value() is not None else None
            newest[key] = ((msg.partition(), msg.offset()), value)
    print(json.dumps({"records": read_count,
                      "table": {k: v for k, (_, v) in newest.items() if v is not None}}))


def place(name, keys):
    producer = Producer({"bootstrap.servers": BROKERS, "partitioner": "murmur2_random"})
    placed = {}

    def report(err, msg):
        if err:
            raise SystemExit(str(err))
        placed[msg.key().decode()] = msg.partition()

    for key in keys:
        producer.produce(name, key=key.encode(), value=b"{}", on_delivery=report)
    producer.flush(10)
    print(json.dumps(placed))


def committed(group, name):
    consumer = Consumer({"bootstrap.servers": BROKERS, "group.id": group, "enable.auto.commit": False})
    tps = consumer.committed([TopicPartition(name, p) for p in partitions_of(name)], timeout=10)
    print(json.dumps({str(tp.partition): tp.offset for tp in tps}))
    consumer.close()


def member(group, name, strategy="range"):
    import threading

    def say(**event):
        print(json.dumps(event), flush=True)

    consumer = Consumer({"bootstrap.servers": BROKERS, "group.id": group,
                         "partition.assignment.strategy": strategy,
                         "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.subscribe([name],
                       on_assign=lambda c, ps: say(assigned=sorted(p.partition for p in ps)),
                       on_revoke=lambda c, ps: say(revoked=sorted(p.partition for p in ps)))
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.is_set():
        # Records are fetched but dropped: this member only takes part in the protocol. Its
        # partitions are consumed by whoever gets them after it leaves.
        consumer.poll(0.2)
    consumer.close()
    say(left=True)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"topic": lambda: topic(args[0]),
     "read": lambda: read(args[0]),
     "place": lambda: place(args[0], args[1:]),
     "updates": lambda: updates(*args),
     "table": lambda: table_of(args[0]),
     "committed": lambda: committed(args[0], args[1]),
     "member": lambda: member(*args)}[cmd]()

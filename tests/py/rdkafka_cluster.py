"""librdkafka (confluent-kafka) on the tests' three-broker cluster front: the reference for what
a Kafka client survives when leaders move, coordinators move and brokers die.

    rdkafka_cluster.py produce TOPIC COUNT RATE   -> {"acked": n} every 500 acks, then
                                                     {"acked": n, "failed": f, "done": true};
                                                     values are {"id": "ID"}, keyed by the id,
                                                     ids "rk-0" … "rk-(COUNT-1)"
    rdkafka_cluster.py consume GROUP TOPIC        -> a group member: {"assigned": [...]} as it
                                                     happens, {"ids": [...]} per poll batch,
                                                     commits synchronously after each batch;
                                                     leaves when stdin closes: {"left": true}
"""
import json
import os
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaException, Producer

BROKERS = os.environ.get("STREAMLAB_BROKERS", "127.0.0.1:9092")


def say(**event):
    print(json.dumps(event), flush=True)


def produce(topic, count, rate):
    count, rate = int(count), float(rate)
    producer = Producer({"bootstrap.servers": BROKERS, "linger.ms": 5,
                         "topic.metadata.refresh.interval.ms": 2000})
    acked, failed = [0], [0]

    def report(err, _msg):
        if err:
            failed[0] += 1
        else:
            acked[0] += 1
            if acked[0] % 500 == 0:
                say(acked=acked[0])

    started = time.monotonic()
    for i in range(count):
        if rate > 0:
            due = started + i / rate
            while time.monotonic() < due:
                producer.poll(max(0.0, due - time.monotonic()))
        key = "rk-%d" % i
        while True:
            try:
                producer.produce(topic, key=key, value=json.dumps({"id": key}), on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)
    say(acked=acked[0], failed=failed[0], done=True)


def consume(group, topic):
    consumer = Consumer({"bootstrap.servers": BROKERS, "group.id": group,
                         "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "topic.metadata.refresh.interval.ms": 2000})
    consumer.subscribe([topic],
                       on_assign=lambda c, ps: say(assigned=sorted(p.partition for p in ps)))
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.is_set():
        messages = consumer.consume(500, 0.2)
        ids = [json.loads(m.value())["id"] for m in messages if m.error() is None]
        if ids:
            say(ids=ids)
            commit(consumer)
    commit(consumer)
    consumer.close()
    say(left=True)


def commit(consumer):
    """Commit what was consumed; a moving coordinator is retried, as applications do."""
    for _ in range(50):
        try:
            consumer.commit(asynchronous=False)
            return
        except KafkaException as e:
            if e.args[0].code() == -168:  # _NO_OFFSET: nothing new to commit
                return
            time.sleep(0.2)
    raise SystemExit("could not commit offsets")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"produce": lambda: produce(*args), "consume": lambda: consume(*args)}[cmd]()

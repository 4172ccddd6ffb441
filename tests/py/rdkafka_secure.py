"""librdkafka (confluent-kafka) through a secured listener, to prove the tests' TLS and SASL
front against a client nobody here wrote.

    rdkafka_secure.py produce TOPIC N   -> sends N records keyed k0…k(N-1), values {"n": i}
    rdkafka_secure.py read TOPIC        -> one JSON line per record, every partition, from the start

The broker is STREAMLAB_BROKERS; the security settings (security.protocol, sasl.*, ssl.*) are
the JSON object in STREAMLAB_RDKAFKA_SECURITY.
"""
import json
import os
import sys

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

CONF = {"bootstrap.servers": os.environ["STREAMLAB_BROKERS"]}
CONF.update(json.loads(os.environ["STREAMLAB_RDKAFKA_SECURITY"]))


def produce(topic, n):
    producer = Producer(dict(CONF, **{"acks": "all"}))
    failed = []
    for i in range(n):
        producer.produce(topic, key=f"k{i}", value=json.dumps({"n": i}),
                         on_delivery=lambda err, msg: err and failed.append(str(err)))
    if producer.flush(30) != 0 or failed:
        raise SystemExit(f"produce failed: {failed[:3]}")
    print(json.dumps({"produced": n}))


def read(topic):
    md = AdminClient(CONF).list_topics(topic, timeout=10)
    parts = sorted(md.topics[topic].partitions)
    consumer = Consumer(dict(CONF, **{"group.id": "xcheck-secure", "enable.auto.commit": False,
                                      "enable.partition.eof": True}))
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    done = set()
    while len(done) < len(parts):
        msg = consumer.poll(10)
        if msg is None:
            raise SystemExit("timed out reading " + topic)
        if msg.error():
            if msg.error().code() == -191:  # _PARTITION_EOF
                done.add(msg.partition())
                continue
            raise SystemExit(str(msg.error()))
        print(json.dumps({"partition": msg.partition(), "offset": msg.offset(),
                          "value": msg.value().decode(errors="replace")}))
    consumer.close()


if __name__ == "__main__":
    command, topic = sys.argv[1], sys.argv[2]
    if command == "produce":
        produce(topic, int(sys.argv[3]))
    elif command == "read":
        read(topic)
    else:
        raise SystemExit(__doc__)

"""Read a topic from the start with kafka-python, the sensors seed's own client, installed as its
README says (no optional compression packages). Prints the values' ids as a JSON list.

    kafka_python_read.py TOPIC EXPECTED
"""
import json
import os
import sys

from kafka import KafkaConsumer

BROKERS = os.environ.get("STREAMLAB_BROKERS", "127.0.0.1:9092")


def main():
    topic, expected = sys.argv[1], int(sys.argv[2])
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=BROKERS.split(","),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=15000,
    )
    ids = []
    try:
        for message in consumer:
            ids.append(json.loads(message.value)["id"])
            if len(ids) >= expected:
                break
    finally:
        consumer.close()
    print(json.dumps(ids))


main()

#!/usr/bin/env python3
"""A plain Kafka consumer (confluent-kafka, not Herald's code) that reads the
events topic in its own consumer group and validates every record against the
published JSON Schema (schemas/herald.events.v1.json):

  .cache/venv/bin/python scripts/check-events-topic.py \
      --brokers 127.0.0.1:9092 --topic herald.events --expect 100

Checks per record: the value is valid against the schema, the key is the
tenant id, the headers id/type/schema_version/dedupe_key match the value (and
a record may carry `herald.indexed: 1`, Herald's own mark, nothing else).
Reads until --expect records were seen (or --timeout passes), commits its
offsets, prints one JSON summary line, and exits non-zero on any violation.
"""
import argparse
import json
import pathlib
import sys
import time

from confluent_kafka import Consumer, KafkaException
from jsonschema import Draft202012Validator, FormatChecker

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--topic", default="herald.events")
    ap.add_argument("--group", default="herald-schema-check")
    ap.add_argument("--schema", default=str(ROOT / "schemas" / "herald.events.v1.json"))
    ap.add_argument("--expect", type=int, required=True, help="records to read")
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()

    schema = json.loads(pathlib.Path(args.schema).read_text())
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": args.group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "partition.assignment.strategy": "cooperative-sticky",
    })
    consumer.subscribe([args.topic])
    seen, errors, ids = 0, [], set()
    deadline = time.monotonic() + args.timeout
    try:
        while seen < args.expect and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            seen += 1
            where = f"partition {msg.partition()} offset {msg.offset()}"
            try:
                value = json.loads(msg.value())
            except ValueError as e:
                errors.append(f"{where}: value is not JSON: {e}")
                continue
            for err in validator.iter_errors(value):
                errors.append(f"{where}: {err.json_path}: {err.message}")
            if not isinstance(value, dict):
                continue
            ids.add(value.get("id"))
            key = (msg.key() or b"").decode()
            if key != value.get("tenant_id"):
                errors.append(f"{where}: key {key!r} is not the tenant id")
            headers = {k: v.decode() for k, v in (msg.headers() or [])}
            if headers.pop("herald.indexed", "1") != "1":
                errors.append(f"{where}: header herald.indexed is not 1")
            want = {"id": value.get("id"), "type": value.get("type"),
                    "schema_version": str(value.get("schema_version"))}
            if value.get("dedupe_key") is not None:
                want["dedupe_key"] = value["dedupe_key"]
            if headers != want:
                errors.append(f"{where}: headers {headers} != {want}")
        if seen:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    print(json.dumps({"records": seen, "distinct_ids": len(ids), "errors": errors[:20],
                      "error_count": len(errors)}))
    if seen < args.expect:
        print(f"only {seen} of {args.expect} records within {args.timeout}s", file=sys.stderr)
        return 1
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

"""`stgr serve-llm` answers the OpenAI Batch API (files and batches) with the policy it uses
online, so a batch-mode client can be tested end to end against it with the real openai client."""

from __future__ import annotations

import io
import json
import time

import pytest
from openai import OpenAI

from stgr_builder.dryrun.server import serve_llm

PROMPT = (
    "Objects to ground: dog\nB1: dog (0.90) on frame 1 at 0.5s\nB2: cat (0.40) on frame 1 at 0.5s\n"
    "Write the span as [SPAN]."
)


def _line(custom_id: str) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "stgr-dry-run",
            "messages": [{"role": "system", "content": "annotate"}, {"role": "user", "content": PROMPT}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "stgr_cot_reply", "schema": {}}},
        },
    }


@pytest.mark.slow  # waits for a batch
def test_a_batch_is_uploaded_submitted_polled_and_collected():
    with serve_llm(batch_delay_s=0.05, fault_rate=0.25, faults=["500"]) as server:
        client = OpenAI(base_url=server.base_url, api_key="sk-test")
        jsonl = "".join(json.dumps(_line(f"key-{i}")) + "\n" for i in range(8)).encode()
        uploaded = client.files.create(file=("requests.jsonl", io.BytesIO(jsonl)), purpose="batch")
        assert uploaded.bytes == len(jsonl) and client.files.content(uploaded.id).read() == jsonl
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"stgr_intent": "abc"},
        )
        assert batch.status == "in_progress"
        for _ in range(100):
            batch = client.batches.retrieve(batch.id)
            if batch.status == "completed":
                break
            time.sleep(0.05)
        assert batch.status == "completed"
        assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (8, 6, 2)
        lines = [json.loads(x) for x in client.files.content(batch.output_file_id).read().splitlines()]
        errors = [json.loads(x) for x in client.files.content(batch.error_file_id).read().splitlines()]
        assert sorted(r["custom_id"] for r in lines + errors) == sorted(f"key-{i}" for i in range(8))
        reply = json.loads(lines[0]["response"]["body"]["choices"][0]["message"]["content"])
        assert (
            reply["key_frames"] == [{"frame": 1, "boxes": [{"id": 1, "name": "dog"}]}]
            and "[SPAN]" in reply["reasoning"]
        )
        assert {e["response"]["status_code"] for e in errors} == {500}
        # a client that lost its record finds its batch again by metadata
        found = [b for b in client.batches.list() if (b.metadata or {}).get("stgr_intent") == "abc"]
        assert [b.id for b in found] == [batch.id]
        stats = server.stats()
        assert stats["total"] == 0 and stats["batches"] == 1 and stats["batch_lines"] == 8  # nothing online
        assert client.batches.cancel(batch.id).status == "completed"

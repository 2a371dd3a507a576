"""``annotator.mode: batch``: the first request of every sample sent through the OpenAI Batch API
(OpenAI, Azure, Gemini's compatible endpoint; ``stgr serve-llm`` for dry runs) at the batch
price, its replies put into the same request cache the online path reads, so the rows are the
online mode's byte for byte.

A shard's new requests (their cache keys are the ``custom_id``) are written as Batch JSONL,
split by ``batch_max_requests`` and ``batch_max_bytes``, uploaded (Files API, purpose ``batch``)
and submitted as batches. What is submitted is recorded under ``<out>/_cache/batches/`` before
anything is uploaded, and each batch id as soon as the provider returns it; a batch is also
tagged with ``metadata.stgr_intent``, so a build killed between the two finds it by listing the
batches. A request is never submitted while a batch holding it is uncollected: a killed or
``--no-wait`` build started again (with another budget, or fewer samples left) reattaches to
the batches that hold its requests and submits only the others. Paid work is never submitted
twice.

Collecting a finished batch: a line answered 200 becomes a cached reply; a line refused for
good (a 4xx but 408/409/429) a cached error (the sample is rejected as online); a transient
failure (429, 5xx, an expired batch) is not cached, and the online path asks it again. Re-asks
of invalid replies and crop checks go online (they depend on the first reply).

>>> jobs = BatchJobs(Path("out"), max_requests=50_000, max_bytes=200 << 20, poll_s=30)   # doctest: +SKIP
>>> replies = jobs.run({"<key>": body}, wait=False)                                     # doctest: +SKIP
BatchPending: 64 requests in 1 batches pending; run again to collect
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from stgr_builder.core.files import atomic_write_text
from stgr_builder.core.hashing import digest
from stgr_builder.core.layout import BATCH_DIR
from stgr_builder.errors import BatchPending, warn

#: Where the records of submitted batches live, under the dataset folder.
ENDPOINT = "/v1/chat/completions"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


def _record_problem(record: Any) -> str | None:
    """What makes a batch record unusable (a hand edit, damage), or None."""
    if not isinstance(record, dict) or not isinstance(record.get("intent"), str):
        return "not a batch record (no intent)"
    chunks = record.get("chunks")
    if not isinstance(chunks, list) or not all(
        isinstance(c, dict)
        and isinstance(c.get("keys"), list)
        and all(isinstance(k, str) for k in c["keys"])
        and (c.get("batch_id") is None or isinstance(c["batch_id"], str))
        and isinstance(c.get("done", 0), int)
        for c in chunks
    ):
        return "its chunks are not lists of request keys"
    return None


def read_record(path: Path) -> tuple[dict | None, str | None]:
    """(the batch record in ``path``, None) or (None, what makes it unusable)."""
    try:
        record = json.loads(path.read_text())
    except OSError as exc:
        return None, f"unreadable ({exc.strerror})"
    except ValueError:
        return None, "not JSON"
    problem = _record_problem(record)
    return (None, problem) if problem else (record, None)


def _usable_records(root: Path) -> list[dict]:
    return [
        record
        for path in sorted((Path(root) / BATCH_DIR).glob("*.json"))
        if (record := read_record(path)[0]) is not None
    ]


def pending_batches(root: Path) -> tuple[int, int]:
    """(requests, batches) submitted under ``root`` and not collected yet."""
    requests = batches = 0
    for record in _usable_records(root):
        for chunk in record["chunks"]:
            if not chunk.get("collected"):
                requests += len(chunk["keys"])
                batches += 1
    return requests, batches


def batch_progress(root: Path) -> tuple[int, int]:
    """(requests answered, requests submitted) of the batches under ``root``, as last polled."""
    done = total = 0
    for record in _usable_records(root):
        for chunk in record["chunks"]:
            total += len(chunk["keys"])
            done += len(chunk["keys"]) if chunk.get("collected") else min(len(chunk["keys"]), chunk.get("done", 0))
    return done, total


def _chunks(lines: list[tuple[str, bytes]], max_requests: int, max_bytes: int) -> list[list[tuple[str, bytes]]]:
    out: list[list[tuple[str, bytes]]] = [[]]
    size = 0
    for key, line in lines:
        if out[-1] and (len(out[-1]) >= max_requests or size + len(line) > max_bytes):
            out.append([])
            size = 0
        out[-1].append((key, line))
        size += len(line)
    return [chunk for chunk in out if chunk]


class BatchJobs:
    """Submit, record, poll and collect the batches of one shard (see the module's docstring)."""

    def __init__(self, root: Path, *, max_requests: int, max_bytes: int, poll_s: float, client_factory=None):
        self.root = Path(root)
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.poll_s = poll_s
        self._client_factory = client_factory
        self.submitted = 0  # batches this instance created (a reattached one is not counted)
        self._collecting: list[tuple[Path, dict]] = []  # the chunks the last run returned
        self._wanted: set[str] = set()  # the requests it was asked for

    def client(self):
        if self._client_factory is not None:
            return self._client_factory()
        from openai import OpenAI

        return OpenAI(max_retries=5, timeout=120.0)

    def _locked(self) -> int:
        """An open descriptor holding the exclusive lock of the batch records (close it to release)."""
        folder = self.root / BATCH_DIR
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _records(self) -> dict[Path, dict]:
        records = {}
        for path in sorted((self.root / BATCH_DIR).glob("*.json")):
            record, problem = read_record(path)
            if record is None:
                # Its batches (if any were submitted) are not collected from here: their requests
                # may be submitted again. Listing the provider's batches finds a tagged one.
                warn(f"{path}: {problem}; ignored, its requests are submitted again unless a batch holds them")
                continue
            records[path] = record
        return records

    def run(
        self,
        bodies: Mapping[str, dict],
        *,
        wait: bool,
        admit: Callable[[], bool] | None = None,
        answered: Callable[[str], bool] | None = None,
    ) -> dict[str, tuple[int, Any]]:
        """Submit the requests of ``bodies`` (cache key -> chat completion body) that no earlier
        run submitted (``admit``, the budget, is asked for each new one: those refused are left
        out), reattach to the batches holding the others, wait for them all (or raise
        ``BatchPending``), and return each key's (status, reply body). ``answered`` (asked under
        the lock) leaves out a request whose reply another shard collected and cached since the
        caller looked."""
        if not bodies:
            return {}
        # Shards of a build submit one at a time (a flock): the same request of two shards (a
        # judge's shared crops) is recorded and submitted once, and a shard never finds another's
        # chunk recorded but not yet submitted.
        lock = self._locked()
        try:
            records = self._records()
            submitted = {
                key
                for record in records.values()
                for chunk in record["chunks"]
                if not chunk.get("collected")
                for key in chunk["keys"]
            }
            # A shared request another shard collected while this one was deciding: its reply is
            # cached before its chunk is marked collected, so it is found here, never sent twice.
            new = [key for key in sorted(bodies) if key not in submitted and not (answered and answered(key))]
            if admit is not None:
                new = [key for key in new if admit()]
            if new:
                intent = digest(new)[:16]
                path = self.root / BATCH_DIR / f"{intent}.json"
                if path not in records:
                    lines = [
                        (
                            key,
                            (
                                json.dumps(
                                    {"custom_id": key, "method": "POST", "url": ENDPOINT, "body": bodies[key]},
                                    separators=(",", ":"),
                                )
                                + "\n"
                            ).encode(),
                        )
                        for key in new
                    ]
                    records[path] = {
                        "intent": intent,
                        "chunks": [
                            {"keys": [key for key, _ in chunk], "batch_id": None, "collected": False}
                            for chunk in _chunks(lines, self.max_requests, self.max_bytes)
                        ],
                    }
                    self._save(path, records[path])  # before anything is uploaded
            wanted = set(bodies)
            mine = [
                (path, chunk)
                for path, record in records.items()
                for chunk in record["chunks"]
                if not chunk.get("collected") and wanted.intersection(chunk["keys"])
            ]
            if not mine:
                return {}
            client = self.client()
            for path, chunk in mine:
                if chunk["batch_id"] is None:
                    record = records[path]
                    tag = f"{record['intent']}-{record['chunks'].index(chunk)}"
                    chunk["batch_id"] = self._find(client, tag) or self._submit(client, tag, chunk["keys"], bodies)
                    self._save(path, record)
        finally:
            os.close(lock)
        while True:
            batches = {chunk["batch_id"]: client.batches.retrieve(chunk["batch_id"]) for _, chunk in mine}
            self._progress({path for path, _ in mine}, batches)
            running = [b for b in batches.values() if b.status not in TERMINAL]
            if not running:
                break
            if not wait:
                raise BatchPending(sum(len(chunk["keys"]) for _, chunk in mine), len(running))
            time.sleep(self.poll_s)
        replies: dict[str, tuple[int, Any]] = {}
        for batch in batches.values():
            for file_id in (batch.output_file_id, batch.error_file_id):
                if not file_id:
                    continue
                for line in client.files.content(file_id).read().splitlines():
                    try:
                        item = json.loads(line)
                        response = item.get("response") or {}
                        replies[item["custom_id"]] = (int(response.get("status_code") or 0), response.get("body"))
                    except (ValueError, KeyError, TypeError, AttributeError):
                        continue
        self._collecting, self._wanted = mine, set(bodies)
        return replies

    def _progress(self, paths: set[Path], batches: Mapping[str, Any]) -> None:
        """Each batch's status and count of finished requests into its record, for `stgr build`'s
        bar (read again under the lock: another shard may share the record)."""
        lock = self._locked()
        try:
            for path in paths:
                record, _ = read_record(path)
                if record is None:
                    continue
                for chunk in record["chunks"]:
                    batch = batches.get(chunk["batch_id"])
                    counts = getattr(batch, "request_counts", None)
                    if batch is not None and counts is not None:
                        chunk["status"], chunk["done"] = batch.status, counts.completed + counts.failed
                self._save(path, record)
        finally:
            os.close(lock)

    def collected(self, answered: Callable[[str], bool] | None = None) -> None:
        """Mark the batches the last ``run`` returned collected (the caller cached the replies
        of the requests it asked for). A batch also holding another shard's requests (a shared
        judge request brought it in) stays uncollected until their replies are cached too
        (``answered``): marked collected now, its other requests would look never submitted, and
        that shard would pay for them again in a new batch."""
        lock = self._locked()
        try:
            done = {chunk["batch_id"] for _, chunk in self._collecting}
            for path, record in self._records().items():
                taken = [
                    chunk
                    for chunk in record["chunks"]
                    if chunk["batch_id"] in done
                    and all(key in self._wanted or (answered and answered(key)) for key in chunk["keys"])
                ]
                for chunk in taken:
                    chunk["collected"] = True
                if taken:
                    self._save(path, record)
        finally:
            os.close(lock)

    @staticmethod
    def _save(path: Path, record: dict) -> None:
        atomic_write_text(path, json.dumps(record, indent=1))

    @staticmethod
    def _find(client, tag: str) -> str | None:
        """A batch submitted with this tag by a run killed before it recorded the id. Listing is
        optional (it only guards that crash window): a provider that refuses it (404, 405, 501,
        403) is warned of and the local record is relied on."""
        import openai

        try:
            for batch in client.batches.list(limit=100):
                if (batch.metadata or {}).get("stgr_intent") == tag and batch.status != "cancelled":
                    return batch.id
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 429) or (exc.status_code >= 500 and exc.status_code != 501):
                raise  # the key, or the endpoint itself: not about this optional call
            warn(
                f"the provider refused to list batches (GET /batches: HTTP {exc.status_code}); "
                f"relying on the local record of submitted batches"
            )
        return None

    def _submit(self, client, tag: str, keys: list[str], bodies: Mapping[str, dict]) -> str:
        data = "".join(
            json.dumps(
                {"custom_id": key, "method": "POST", "url": ENDPOINT, "body": bodies[key]}, separators=(",", ":")
            )
            + "\n"
            for key in keys
        ).encode()
        uploaded = client.files.create(file=(f"stgr-{tag}.jsonl", data), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h", metadata={"stgr_intent": tag}
        )
        self.submitted += 1
        return batch.id


__all__ = ["BATCH_DIR", "BatchJobs", "BatchPending", "batch_progress", "pending_batches"]

"""The OpenAI Batch API of the dry-run server: files and batches in memory, a batch answered line
by line with the policy in a background thread (see ``server``'s docstring)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from stgr_builder.dryrun.options import ServerOptions
from stgr_builder.dryrun.policy import chat_reply


def _multipart(raw: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name -> (filename, bytes)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)  # bytes, or None for an empty part
        if isinstance(name, str):  # a part without a name cannot be asked for
            fields[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


class BatchApi:
    """Files and batches of the OpenAI Batch API, in memory (see the module's docstring)."""

    def __init__(self, options: ServerOptions, fault: Callable[[], str | None]):
        self.options = options
        self.fault = fault  # the server's fault schedule: batch lines meet the same faults as requests
        self.lock = threading.Lock()
        self.files: dict[str, dict] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.lines = 0

    def counts(self) -> dict[str, int]:
        """Files, batches, lines answered, and ``batches_running`` (not yet completed or cancelled)."""
        with self.lock:
            running = sum(b["status"] in ("validating", "in_progress") for b in self.batches.values())
            return {
                "files": len(self.files),
                "batches": len(self.batches),
                "batch_lines": self.lines,
                "batches_running": running,
            }

    def _file(self, data: bytes, filename: str, purpose: str) -> dict:
        with self.lock:
            file_id = f"file-{len(self.files) + 1:06d}"
            record = {
                "id": file_id,
                "object": "file",
                "bytes": len(data),
                "created_at": int(time.time()),
                "filename": filename,
                "purpose": purpose,
                "status": "processed",
            }
            self.files[file_id] = record
            self.contents[file_id] = data
        return record

    @staticmethod
    def _missing(what: str) -> tuple[int, dict]:
        return 404, {"error": {"message": f"no such {what}", "type": "invalid_request_error"}}

    def post(self, path: str, raw: bytes, content_type: str) -> tuple[int, Any]:
        if path.endswith("/files"):
            try:
                fields = _multipart(raw, content_type)
                filename, data = fields["file"]
                purpose = fields.get("purpose", (None, b"batch"))[1].decode()
            except (KeyError, ValueError, UnicodeDecodeError) as exc:
                return 400, {
                    "error": {
                        "message": f"a multipart upload with 'file' and 'purpose': {exc}",
                        "type": "invalid_request_error",
                    }
                }
            return 200, self._file(data, filename or "upload.jsonl", purpose)
        if path.endswith("/cancel"):
            batch_id = path.rsplit("/", 2)[-2]
            with self.lock:
                batch = self.batches.get(batch_id)
                if batch is None:
                    return self._missing("batch")
                if batch["status"] in ("validating", "in_progress"):
                    batch["status"] = "cancelled"
                return 200, dict(batch)
        if path.endswith("/batches"):
            try:
                request = json.loads(raw)
                data = self.contents[request["input_file_id"]]
            except (ValueError, KeyError, TypeError):
                return 400, {
                    "error": {"message": "input_file_id names no uploaded file", "type": "invalid_request_error"}
                }
            now = int(time.time())
            with self.lock:
                batch_id = f"batch_{len(self.batches) + 1:06d}"
                batch = {
                    "id": batch_id,
                    "object": "batch",
                    "endpoint": request.get("endpoint", "/v1/chat/completions"),
                    "errors": None,
                    "input_file_id": request["input_file_id"],
                    "completion_window": request.get("completion_window", "24h"),
                    "status": "in_progress",
                    "output_file_id": None,
                    "error_file_id": None,
                    "created_at": now,
                    "in_progress_at": now,
                    "completed_at": None,
                    "cancelled_at": None,
                    "request_counts": {"total": 0, "completed": 0, "failed": 0},
                    "metadata": request.get("metadata"),
                }
                self.batches[batch_id] = batch
            threading.Thread(target=self._run, args=(batch_id, data), daemon=True, name=batch_id).start()
            return 200, dict(batch)
        return 404, {"error": {"message": f"no route {path}", "type": "not_found"}}

    def get(self, path: str) -> tuple[int, Any]:
        parts = path.split("/")
        if parts[-1] == "batches" and not self.options.list_batches:
            return 404, {"error": {"message": "listing batches is not supported", "type": "not_found"}}
        if parts[-1] == "batches":
            with self.lock:
                data = [dict(b) for b in sorted(self.batches.values(), key=lambda b: b["id"], reverse=True)]
            return 200, {
                "object": "list",
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        if len(parts) >= 2 and parts[-2] == "batches":
            with self.lock:
                batch = self.batches.get(parts[-1])
            return (200, dict(batch)) if batch is not None else self._missing("batch")
        if len(parts) >= 3 and parts[-1] == "content" and parts[-3] == "files":
            with self.lock:
                content = self.contents.get(parts[-2])
            return (200, content) if content is not None else self._missing("file")
        if len(parts) >= 2 and parts[-2] == "files":
            with self.lock:
                record = self.files.get(parts[-1])
            return (200, dict(record)) if record is not None else self._missing("file")
        return 404, {"error": {"message": f"no route {path}", "type": "not_found"}}

    def _run(self, batch_id: str, data: bytes) -> None:
        time.sleep(self.options.batch_delay_s)
        ok: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for number, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            with self.lock:
                if self.batches[batch_id]["status"] == "cancelled":
                    return
                self.lines += 1
            try:
                request = json.loads(line)
                custom_id, body = request["custom_id"], request["body"]
            except (ValueError, KeyError, TypeError):
                failed.append(
                    {
                        "id": f"batch_req_{number}",
                        "custom_id": None,
                        "response": None,
                        "error": {"code": "invalid_line", "message": f"line {number} is not a batch request"},
                    }
                )
                continue
            status, reply = chat_reply(body, self.fault(), line, self.options)
            record = {
                "id": f"batch_req_{number}",
                "custom_id": custom_id,
                "response": {"status_code": status, "request_id": f"req_{number}", "body": reply},
                "error": None,
            }
            (ok if status == 200 else failed).append(record)
        outputs = {}
        for kind, records in (("output", ok), ("error", failed)):
            if records:
                text = "".join(json.dumps(r) + "\n" for r in records).encode()
                outputs[kind] = self._file(text, f"{batch_id}_{kind}.jsonl", "batch_output")["id"]
        with self.lock:
            batch = self.batches[batch_id]
            if batch["status"] == "cancelled":
                return
            batch.update(
                status="completed",
                completed_at=int(time.time()),
                output_file_id=outputs.get("output"),
                error_file_id=outputs.get("error"),
                request_counts={"total": len(ok) + len(failed), "completed": len(ok), "failed": len(failed)},
            )

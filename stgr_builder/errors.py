"""Every exception stgr-builder raises on purpose, in one tree.

A bad *sample* never raises out of a step: steps turn ``SampleError`` into a ``Reject``.
``StgrError`` is for the user's mistakes (bad config, missing dependency) and ends the command
with a one-line reason. A shard that stops for now without anything being wrong (the run's LLM
budget is spent, a batch is submitted) is not an exception at all: the steps return a
``core.steps.Deferred`` value; ``BudgetReached`` and ``BatchPending`` only carry that news inside
the annotator, which turns them into a ``Deferred``.

The exception hierarchy::

    StgrException                  every exception below (never raised itself)
    ├── StgrError                  the user must fix something: the CLI prints one line, exits 1
    │   ├── EndpointDead           the LLM endpoint never answered: the build stops
    │   └── QueryTimeout           an audit query ran past its timeout
    ├── SampleError                one sample cannot go on: the step makes it a Reject (``code``)
    ├── TraceError (ValueError)    a trace or answer that breaks the grammar (``code``)
    ├── DecodeError                the decoder could not produce a wanted frame
    ├── ReplyError (ValueError)    an LLM reply that parses but cannot be used: asked again
    ├── LlmRequestError            asking the LLM failed for good (``sample_error`` maps each)
    │   ├── LlmError               a final failure no retry can change: rejected, cached
    │   ├── LlmUnavailable         transient, after the retries: the sample is left pending
    │   ├── ReplyTooLarge          every try's reply was over the size cap: rejected
    │   └── ReplyRejected          replies stayed invalid after every re-ask (``code``)
    ├── BadReply                   a 200 reply that cannot be read: retried like a 5xx
    │   └── TooLarge               a reply body over the size cap (not read further)
    ├── BudgetReached              the run's LLM budget stopped a request  -> Deferred("budget")
    ├── BatchPending               Batch API jobs submitted, not back yet   -> Deferred("batch")
    └── RequestDeferred            a judge request recorded for a batch instead of sent (batch mode)

    StgrWarning (UserWarning)      worth knowing, does not stop the command: ``warning: ...``

Each class is still importable from the module that raises it (``annotate.client.LlmError``).
"""

from __future__ import annotations

import warnings

from stgr_builder.models import RejectCode


class StgrException(Exception):
    """The root of every exception stgr-builder raises on purpose (see the tree above)."""


class StgrError(StgrException):
    """A problem the user must fix; the CLI prints it as one line and exits non-zero."""


class StgrWarning(UserWarning):
    """Something the user should know that does not stop the command (a stored file that could
    not be used and is rebuilt, an optional provider call refused); the CLI prints it as one
    line ``warning: ...``."""


def warn(message: str) -> None:
    """Issue ``message`` as a ``StgrWarning`` (library code never prints)."""
    warnings.warn(message, StgrWarning, stacklevel=2)


class EndpointDead(StgrError):
    """The endpoint never answered within ``annotator.dead_endpoint_s``: the build stops."""


class QueryTimeout(StgrError):
    """The query ran past its timeout and was interrupted."""


class SampleError(StgrException):
    """One sample cannot go on; the step that catches it turns it into a Reject."""

    def __init__(self, code: RejectCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class TraceError(StgrException, ValueError):
    """A trace or an answer that breaks the grammar; ``code`` says which rule.

    >>> from stgr_builder.core.grammar import parse_trace
    >>> try:
    ...     parse_trace("<obj>dog</obj>")
    ... except TraceError as err:
    ...     err.code.value
    'trace_grammar'
    """

    def __init__(self, code: RejectCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class DecodeError(StgrException):
    """The decoder could not produce a wanted frame (corrupt or unreadable data)."""


class ReplyError(StgrException, ValueError):
    """A reply that parses but cannot be used; its message goes back to the model. ``check``
    names the semantic check that caught it (None: the reply's form), ``code`` the sample's
    reject code when the re-asks do not fix it."""

    def __init__(self, message: str, *, check: str | None = None, code: RejectCode = RejectCode.LLM_INVALID_REPLY):
        super().__init__(message)
        self.check = check
        self.code = code


class LlmRequestError(StgrException):
    """Asking the LLM failed for good; ``annotate.client.sample_error`` maps each kind to the
    sample's outcome (pending or a reject code)."""


class LlmError(LlmRequestError):
    """A request's final failure that no retry can change (a 4xx other than 408/409/429, a
    refusal, an empty reply); cached, and the sample is rejected."""


class LlmUnavailable(LlmRequestError):
    """A transient failure after the retries (429, 5xx, timeout, transport, a broken reply):
    never cached, and the sample is left pending for the next run. The message starts with
    the reason (``models.PENDING_REASONS``): ``server_error: HTTP 503 after 3 retries``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class ReplyTooLarge(LlmRequestError):
    """Every try's reply body (two at least) was over ``MAX_REPLY_BYTES``: never cached, the
    sample is rejected. Once only (no retries configured) is a fault: the sample is pending."""


class ReplyRejected(LlmRequestError):
    """Replies stayed invalid after every re-ask; ``code`` is the last error's reject code."""

    def __init__(self, message: str, code: RejectCode = RejectCode.LLM_INVALID_REPLY):
        super().__init__(message)
        self.code = code


class BadReply(StgrException):
    """A 200 reply that cannot be read as a chat completion (cut short, not JSON, HTML, dropped
    connection): retried like a 5xx."""


class TooLarge(BadReply):
    """A reply body over ``MAX_REPLY_BYTES`` (not read further)."""


class BudgetReached(StgrException):
    """The run's LLM budget stopped a request. Inside the annotator only: ``annotate_batch``
    returns ``Deferred("budget")`` for it, the shard writes nothing and the next run finishes it."""


class BatchPending(StgrException):
    """Batches of this shard are submitted and not finished (``--no-wait``). Inside the annotator
    only: ``annotate_batch`` returns ``Deferred("batch")`` for it, and a later run collects them."""

    def __init__(self, requests: int, batches: int):
        super().__init__(f"{requests} requests in {batches} batches pending; run again to collect")
        self.requests = requests
        self.batches = batches


class RequestDeferred(StgrException):
    """A request the cache lacks, asked by an ``Asker`` that collects requests for a batch
    (``Asker.deferred`` set) instead of sending them: its body is recorded there."""


def require(module: str, extra: str | None = None):
    """Import a dependency, or fail with the pip command that installs it: the extra of
    pyproject.toml that holds it, or none for a core dependency (tests/test_wheel.py checks that
    every extra named here exists).

    >>> require("transformers", extra="groundingdino")  # doctest: +SKIP
    <module 'transformers' ...>
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        target = f"'stgr-builder[{extra}]'" if extra else "stgr-builder"
        raise StgrError(f"{module} is not installed: pip install {target} ({exc})") from exc

"""Message preparation off the event loop: each frame of an LLM request decoded, downscaled, its
candidate boxes drawn, encoded as JPEG, base64'd and hashed in a process pool.

That work is ~1 ms of CPU a frame (5-6 frames a request), mostly Python-held (drawing, the
pixel copies), so in threads it competes for the interpreter lock with the event loop that sends
and receives the requests: at 32 in flight the loop starves. In worker processes it does not.
The bytes are the same either way (the same ``draw_frame``), so request keys and cached replies
do not depend on where a frame was drawn. The event loop waits for a worker's frames without a
thread (``submit``, then ``FrameImages.get_many_async``).

``annotator.prepare_processes``: None picks ``min(4, cores - 1)`` (none on one core, and none in
a daemonic process such as a Dask worker, which may not have children); 0 keeps preparation in
threads. A pool that breaks falls back to threads for good. Workers exit on their own when the
process that made them is killed. As with any ``multiprocessing`` pool, a script that builds
must guard its entry point (``if __name__ == "__main__":``): a worker imports the main module;
without the guard the pool breaks and preparation stays in threads.

>>> pool = PreparePool(2)                                          # doctest: +SKIP
>>> pool.render_many([("out/kfs/a.jpg", ((1, (0.1, 0.2, 0.5, 0.6)),), 640)])  # doctest: +SKIP
[('data:image/jpeg;base64,...', 'sha256:...')]
"""

from __future__ import annotations

import functools
import io
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from types import SimpleNamespace

from PIL import Image, ImageDraw, ImageFont

from stgr_builder.annotate.cache import image_digest
from stgr_builder.annotate.crops import data_url
from stgr_builder.core.cache import BoundedCache

#: One frame to render: (path, ((candidate id, box), ...), max_side).
FrameJob = tuple[str, tuple[tuple[int, tuple[float, ...]], ...], int]


def default_processes(configured: int | None) -> int:
    """Worker processes for ``annotator.prepare_processes``."""
    if configured is not None:
        return configured
    if multiprocessing.current_process().daemon:
        return 0  # a daemonic process (a Dask worker) may not start children
    return max(0, min(4, (os.cpu_count() or 1) - 1))


_COLORS = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
]


def base_frame(path: str, max_side: int) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        # convert() copies even an RGB image; the decoded one is ours already.
        rgb = image if image.mode == "RGB" else image.convert("RGB")
    scale = min(1.0, max_side / max(rgb.size))
    if scale < 1.0:
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))))
    return rgb


@functools.cache
def _label_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # The font ImageDraw uses when given none; loading it per call is most of a frame's drawing.
    return ImageFont.load_default()


def draw_frame(
    path: Path | str,
    candidates: Sequence,
    max_side: int,
    quality: int = 85,
    base: Image.Image | None = None,
    copy: bool = True,
) -> bytes:
    """The frame's JPEG with its candidate boxes drawn and labelled ``B<id>``, downscaled so
    its longer side is at most ``max_side`` (``base``: that downscaled frame, when the caller
    has it; drawn on in place with ``copy=False``). Deterministic (its hash is in the cache key)."""
    if base is None:
        rgb = base_frame(str(path), max_side)
    else:
        rgb = base.copy() if copy else base
    draw = ImageDraw.Draw(rgb)
    font = _label_font()
    width, height = rgb.size
    for cand in candidates:
        x1, y1, x2, y2 = cand.det.box
        color = _COLORS[cand.id % len(_COLORS)]
        rect = (round(x1 * width), round(y1 * height), round(x2 * width), round(y2 * height))
        draw.rectangle(rect, outline=color, width=2)
        draw.text((rect[0] + 3, rect[1] + 2), f"B{cand.id}", fill=color, font=font)
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


#: Used only inside the pool's worker processes (the parent draws through ``FrameImages`` and its
#: ``Resources`` memos): the frames of one video are shared by its samples, so each worker keeps
#: the decoded ones it saw, bounded in bytes like every memo (``core/cache.py``).
_WORKER_BASES: BoundedCache = BoundedCache(64 << 20, weigh=lambda image: image.width * image.height * 3)


#: Frames a worker has decoded once: a frame is kept in ``_WORKER_BASES`` from its second use on.
#: Most frames are drawn once (one sample a video, or the video's samples drawn on other workers);
#: keeping each would cost a copy of its pixels per use (``draw_frame`` draws on a copy), ~15% of
#: a frame's work, for nothing. A frame asked again costs one decode more, once.
_WORKER_SEEN: BoundedCache = BoundedCache(1 << 20, weigh=lambda _: 64)


def _drawable_base(path: str, max_side: int) -> tuple[Image.Image, bool]:
    """(the downscaled frame, whether it is the memo's and must be copied before drawing)."""
    key = (path, max_side)
    kept = _WORKER_BASES.get(key)
    if kept is not None:
        return kept, True
    if _WORKER_SEEN.get(key) is None:
        _WORKER_SEEN.put(key, True)
        return base_frame(path, max_side), False
    kept = base_frame(path, max_side)
    _WORKER_BASES.put(key, kept)
    return kept, True


def render_frame(job: FrameJob) -> tuple[str, str]:
    """(data URL, image digest) of one frame with its boxes drawn: ``draw_frame``'s bytes."""
    path, boxes, max_side = job
    candidates = [SimpleNamespace(id=cid, det=SimpleNamespace(box=list(box))) for cid, box in boxes]
    base, shared = _drawable_base(path, max_side)
    jpeg = draw_frame(path, candidates, max_side, base=base, copy=shared)
    return data_url(jpeg), image_digest(jpeg)


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    """Whether process ``pid`` (started at ``started``, /proc's clock ticks) still runs: not
    gone, not a zombie its parent has yet to reap, not another process with its pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    return fields[0] not in ("Z", "X") and (started is None or fields[19] == started)


def _orphan_guard(parent: int, started: str | None) -> None:
    """In a worker: exit when the process that made the pool is gone. Killed with SIGKILL, that
    process never tells its workers to stop, and they (and the forkserver) would wait forever.
    A terminal's Ctrl-C reaches the workers too (one process group): they ignore it (it printed
    a ``KeyboardInterrupt`` traceback per worker) and end with the command it stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while _alive(parent, started):
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="stgr-orphan-guard").start()


def render_frames(jobs: list[FrameJob]) -> list[tuple[str, str]]:
    return [render_frame(job) for job in jobs]


def _warm() -> int:
    _label_font()  # the imports and the font, once, before the first request
    return os.getpid()


class PreparePool:
    """A lazily started process pool for ``render_frame``; ``render_many`` returns None when
    there is no pool (0 processes, or it broke): the caller renders in its own thread then."""

    def __init__(self, processes: int):
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self.broken = processes <= 0

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # forkserver: never fork a process that runs threads (Prefect's, the event loop's).
                context = multiprocessing.get_context("forkserver")
                self._pool = ProcessPoolExecutor(
                    self.processes,
                    mp_context=context,
                    initializer=_orphan_guard,
                    initargs=(os.getpid(), _start_time(os.getpid())),
                )
                for future in [self._pool.submit(_warm) for _ in range(self.processes)]:
                    future.result()
            return self._pool

    @property
    def started(self) -> bool:
        return self._pool is not None or self.broken

    def start(self) -> None:
        """Start the workers now (blocking: a fraction of a second); a pool that cannot start
        is marked broken."""
        if not self.broken:
            try:
                self._executor()
            except Exception:  # noqa: BLE001 - no pool here (no children allowed, no forkserver): threads
                self.broken = True

    def submit(self, jobs: Sequence[FrameJob]) -> Future | None:
        """The frames rendered in a worker, as a future for ``collect``; None when there is no pool."""
        if self.broken or not jobs:
            return None
        try:
            # One task for the request's frames: one round trip to a worker, not one a frame.
            return self._executor().submit(render_frames, list(jobs))
        except Exception:  # noqa: BLE001 - no pool here (no children allowed, no forkserver): threads
            self.broken = True
            return None

    def collect(self, future: Future) -> list[tuple[str, str]] | None:
        """A ``submit`` future's frames (waiting for them); None when the pool could not render
        them: the caller renders in its own thread then (and so raises the frame's own error)."""
        try:
            return future.result()
        except BrokenProcessPool:  # a worker died: threads from now on
            self.broken = True
            return None
        except Exception:  # noqa: BLE001 - the frame's own error (a missing file)
            return None

    def render_many(self, jobs: Sequence[FrameJob]) -> list[tuple[str, str]] | None:
        """``submit`` and ``collect``, blocking."""
        future = self.submit(jobs)
        return None if future is None else self.collect(future)

    def shutdown(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None


__all__ = ["PreparePool", "base_frame", "default_processes", "draw_frame", "render_frame"]

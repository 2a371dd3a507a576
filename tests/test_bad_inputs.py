"""Failing well. Bad inputs mixed into a source each end as one reject with their own reason
code, and the rest of the build completes exactly as it would have without them; misuse and a
broken environment end as one line on stderr with exit status 2, naming the fix; a killed
build leaves no process behind. The corpus is tests/fixtures/bad/ (``bad_corpus.py``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from stgr_builder.audit import query
from stgr_builder.dryrun.demo import DEMO_FILE, demo_config, generate_demo

from helpers.bad_corpus import add_bad_items, source_id_of

#: The judge is on by default for the openai backend; these tests check other things.
NO_JUDGE = {"judge": {"enabled": False}}

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _stgr(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stgr_builder.cli", *args],
        cwd=cwd,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# A file-system fault for paths under OUT, injected into the CLI's own process.
_FAULT = """
import builtins, errno, os, sys
OUT, CODE, PART = os.path.realpath(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
_open = builtins.open
def _faulty(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
        path = os.path.realpath(os.fspath(file))
        if path.startswith(OUT + os.sep) and PART in path:
            raise OSError(CODE, os.strerror(CODE), os.fspath(file))
    return _open(file, mode, *args, **kwargs)
builtins.open = _faulty
sys.argv = ["stgr"] + sys.argv[4:]
from stgr_builder.cli import main
main()
"""


def _stgr_with_fault(out: Path, code: int, part: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _FAULT, str(out), str(code), part, *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _one_line(result: subprocess.CompletedProcess) -> str:
    """The only line of stderr, which must start with 'error:' (no traceback, no Prefect log)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad")
    generate_demo(folder, seed=3, n_videos=2, n_images=1)
    config = demo_config(seed=3).model_dump(mode="json")
    (folder / "CONFIG.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture(scope="module")
def clean(source, tmp_path_factory) -> Path:
    """The good items alone, built while another build of them is being killed: the killed
    build's temporary Prefect server must go with it, and must not stand in this one's way."""
    out = tmp_path_factory.mktemp("clean") / "out"
    own_server = {name: value for name, value in _env().items() if name != "PREFECT_API_URL"}
    killed = subprocess.Popen(
        [sys.executable, "-m", "stgr_builder.cli", "build", "CONFIG.yaml", "--out", str(out.parent / "killed")],
        cwd=source,
        env=own_server,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = _wait_for_child(killed.pid, "uvicorn", timeout=120)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    result = _stgr("build", "CONFIG.yaml", "--out", str(out), cwd=source, env=own_server)
    assert result.returncode == 0, result.stderr
    assert server is not None, "the build started no temporary Prefect server"
    deadline = time.monotonic() + 10
    while _alive(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(server), "the killed build's Prefect server outlived it"
    return out


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            if int(stat[stat.rindex(b")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :].split()[0] not in (b"Z", b"X")


def _wait_for_child(pid: int, needle: str, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in _children(pid):
            try:
                if needle in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace"):
                    return child
            except OSError:
                continue
        time.sleep(0.1)
    return None


# -- bad samples: one reject each, the rest unchanged --------------------------------------------


def test_each_bad_input_gets_its_own_reason_and_the_rest_is_built(source, clean, tmp_path):
    dirty_source = tmp_path / "src"
    shutil.copytree(source, dirty_source)
    expected = add_bad_items(dirty_source)
    dirty = _stgr("build", "CONFIG.yaml", "--out", str(tmp_path / "dirty"), cwd=dirty_source)
    assert dirty.returncode == 0, dirty.stderr  # rejected samples are not a failure

    lines = (dirty_source / DEMO_FILE).read_text(encoding="utf-8").splitlines()
    rejects = query(tmp_path / "dirty", "SELECT origin, stage, code, message FROM rejects").rows
    got = {
        source_id_of(lines[int(origin.rsplit(":", 1)[1]) - 1]): (code, message) for origin, _, code, message in rejects
    }
    assert {key: got.get(key, (None,))[0] for key in expected} == expected
    assert len(rejects) == len(expected)  # the BOM cost the first record nothing
    assert all(message for _, message in got.values())
    assert "demo_source.jsonl:1" in got[next(k for k, c in expected.items() if c == "duplicate_id")][1]

    # the good items become exactly the rows of the clean build
    for view in ("cot", "rl"):
        sql = f"SELECT * EXCLUDE (provenance) FROM {view} ORDER BY id"
        assert query(tmp_path / "dirty", sql).rows == query(clean, sql).rows

    # `stgr plan` counts the same probe-time rejects as the build
    plan = _stgr("plan", "CONFIG.yaml", "--json", str(tmp_path / "plan.json"), cwd=dirty_source)
    assert plan.returncode == 0, plan.stderr
    filtered = json.loads((tmp_path / "plan.json").read_text())["sources"][0]["filtered"]
    for code in ("not_an_image", "media_too_large"):
        assert filtered.get(code) == list(expected.values()).count(code), (code, filtered)

    # every value reaches the terminal literally: markup in a message, holes in none
    shown = _stgr(
        "audit",
        str(tmp_path / "dirty"),
        "--sql",
        "SELECT code, message FROM rejects",
        cwd=tmp_path,
        env=_env(COLUMNS="400"),
    )
    assert shown.returncode == 0, shown.stderr
    assert "[bold red]x[/x].mp4" in shown.stdout and "must be [start, end] with" in shown.stdout
    literal = _stgr("audit", str(tmp_path / "dirty"), "--sql", "SELECT '[/x]' AS a, '[bold red]b' AS b", cwd=tmp_path)
    assert literal.returncode == 0 and "[/x]" in literal.stdout and "[bold red]b" in literal.stdout


def test_a_wide_table_folds_into_key_value_rows_at_80_columns(clean, tmp_path):
    audit = _stgr("audit", str(clean), cwd=tmp_path, env=_env(COLUMNS="80"))
    assert audit.returncode == 0, audit.stderr
    assert "Provenance (one block per row)" in audit.stdout
    assert "detector_weights_hash" in audit.stdout and "temporal-spatial free-form QA" in audit.stdout
    assert max(len(line) for line in audit.stdout.splitlines()) <= 80


def test_verify_checks_each_key_frame_against_its_content_address(clean, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(clean, copy)
    assert _stgr("verify", str(copy), cwd=tmp_path).returncode == 0
    frame = sorted((copy / "kfs").rglob("*.jpg"))[0]
    frame.write_bytes(frame.read_bytes()[:100])  # truncated, name unchanged
    broken = _stgr("verify", str(copy), cwd=tmp_path)
    assert broken.returncode == 2, broken.stderr
    listed, last = broken.stderr.strip().splitlines()  # the problem, then the one-line verdict
    assert "1 key-frame files do not hash to their names" in listed and last.startswith("error: ")
    assert frame.relative_to(copy).as_posix() in listed
    assert _stgr("verify", str(copy), "--fast", cwd=tmp_path).returncode == 0


# -- misuse and broken environments: one line, exit status 2 -------------------------------------


def _config(source: Path, tmp_path: Path, name: str, **sections) -> Path:
    config = yaml.safe_load((source / "CONFIG.yaml").read_text())
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section].update(values)
        else:
            config[section] = values
    path = source / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "name, sections, says",
    [
        ("imgsz", {"detector": {"imgsz": 100_000}}, "detector.imgsz"),
        ("passwd", {"annotator": {"prompt": "../../../etc/passwd"}}, "neither a prompt name"),
        (
            "llm-prompt",
            {"annotator": {"prompt": "stgr-cot-llm", "backend": "template"}},
            "'stgr-cot-llm' is a 'llm' prompt",
        ),
        (
            "no-file",
            {"sources": [{"name": "S", "adapter": "demo", "path": "nope.jsonl", "media_root": "media"}]},
            "annotation file not found",
        ),
        (
            "no-media",
            {"sources": [{"name": "S", "adapter": "demo", "path": DEMO_FILE, "media_root": "nope"}]},
            "media_root is not a folder",
        ),
        ("typo", {"sampler": {"num_frame": 4}}, "sampler.num_frame"),
    ],
)
def test_a_bad_config_is_one_line_before_any_work(source, tmp_path, name, sections, says):
    config = _config(source, tmp_path, name, **sections)
    result = _stgr("build", str(config), "--out", str(tmp_path / "o"), cwd=source)
    assert result.returncode == 2 and says in _one_line(result)
    assert not (tmp_path / "o").exists()  # nothing started


def test_debug_shows_the_traceback(source, tmp_path):
    config = _config(source, tmp_path, "debug", detector={"imgsz": 100_000})
    result = _stgr("build", str(config), "--out", str(tmp_path / "o"), "--debug", cwd=source)
    assert result.returncode == 2 and "Traceback" in result.stderr and "detector.imgsz" in result.stderr


def test_the_llm_prompt_is_the_default_of_the_openai_backend(source, tmp_path):
    from stgr_builder.pipeline import load_config

    config = _config(source, tmp_path, "openai", annotator={"backend": "openai", "model": "m"})
    raw = yaml.safe_load(config.read_text())
    raw["annotator"].pop("prompt")
    config.write_text(yaml.safe_dump(raw))
    assert load_config(config).annotator.prompt == "stgr-cot-llm"


def test_a_read_only_out_is_one_line(source, tmp_path):
    import errno

    out = tmp_path / "ro"
    result = _stgr_with_fault(out, errno.EROFS, "", "build", "CONFIG.yaml", "--out", str(out), cwd=source)
    line = _one_line(result)
    assert result.returncode == 2 and "Read-only file system" in line and "choose another --out" in line


def test_a_full_disk_is_one_line_and_leaves_no_half_file(source, tmp_path):
    import errno

    out = tmp_path / "full"
    result = _stgr_with_fault(out, errno.ENOSPC, "/kfs/", "build", "CONFIG.yaml", "--out", str(out), cwd=source)
    line = _one_line(result)
    assert result.returncode == 2 and "No space left on device" in line and "free space" in line
    assert not list(out.rglob("*.tmp")) and not (out / "manifest.json").exists()


class _Refuse(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the stdlib's name
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}'
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_an_endpoint_refusing_the_key_is_one_line(source, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = _config(
            source,
            tmp_path,
            "refused",
            annotator={"backend": "openai", "model": "m", "prompt": "stgr-cot-llm", "max_retries": 0, **NO_JUDGE},
        )
        env = _env(OPENAI_BASE_URL=f"http://127.0.0.1:{server.server_port}/v1", OPENAI_API_KEY="wrong")
        result = _stgr("build", str(config), "--out", str(tmp_path / "o"), cwd=source, env=env)
    finally:
        server.shutdown()
    line = _one_line(result)
    assert result.returncode == 2 and "HTTP 401" in line and "OPENAI_API_KEY" in line
    assert "wrong" not in result.stderr  # the key itself is never shown


# --- Bounded queries (issue 21, deliver 5): every `stgr audit --sql` ends, capped, in bounded memory.


# Linux carries a process's peak RSS across exec, and a forked child starts with its parent's
# RSS: a CLI started straight from pytest (GBs after torch) reports pytest's peak. A small Python
# forks the CLI instead and hands back that grandchild's own ``wait4`` figure.
_PEAK_OF_GRANDCHILD = """
import os, sys

pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _stgr_measured(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run the CLI; (result, seconds, peak RSS of the CLI process in MB)."""
    started = time.monotonic()
    peak_file = cwd / "peak_kib.txt"
    command = [sys.executable, "-c", _PEAK_OF_GRANDCHILD, str(peak_file), "-m", "stgr_builder.cli", *args]
    process = subprocess.Popen(
        command, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    watchdog = threading.Timer(120, lambda: os.killpg(process.pid, signal.SIGKILL))
    watchdog.start()
    try:
        stdout, stderr = process.communicate()
    finally:
        watchdog.cancel()
    result = subprocess.CompletedProcess(command, process.returncode, stdout.decode(), stderr.decode())
    return result, time.monotonic() - started, int(peak_file.read_text()) / 1024


def test_a_query_that_never_ends_stops_at_its_timeout(tmp_path):
    result, seconds, _ = _stgr_measured(
        "audit", str(tmp_path), "--sql", "SELECT count(*) FROM range(1000000000000000)", "--timeout", "2", cwd=tmp_path
    )
    line = _one_line(result)
    assert result.returncode == 2 and "query stopped after 2 s (--timeout)" in line
    assert len(result.stderr.strip().splitlines()) == 1 and seconds < 30


def test_a_huge_result_is_capped_and_counted_without_holding_it(tmp_path):
    result, seconds, peak_mb = _stgr_measured(
        "audit", str(tmp_path), "--sql", "SELECT * FROM generate_series(1, 10000000)", "--limit", "5", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    shown = [line.strip("│ ") for line in result.stdout.splitlines() if line.strip("│ ").isdigit()]
    assert shown == ["1", "2", "3", "4", "5"]
    assert "9999995 more rows left out" in result.stdout
    assert peak_mb < 600, peak_mb  # held as Python tuples, 10M rows are over 1 GB


def test_ctrl_c_cancels_a_running_query(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "stgr_builder.cli", "audit", str(tmp_path), "--sql",
         "SELECT count(*) FROM range(1000000000000000)", "--timeout", "600"],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(4)  # well inside the query
    assert process.poll() is None
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130 and time.monotonic() - sent < 10
    assert err.strip() == "stopped by SIGINT"  # one line (stopping.py), no traceback


# --- Config files that are no config (issue 21, deliver 7): one line naming the file and key, exit 2.

_BAD_CONFIGS = {
    "list": (b"- name: a\n- name: b\n", "holds a YAML list, not a config"),
    "binary": (bytes(range(255, 0, -1)) * 4, "is not a text file (byte 0xff at offset 0 is not UTF-8)"),
    "empty": (b"", "is empty: a config needs at least `sources:`"),
    "no-sources": (b"name: x\nsources: []\n", "sources: no source given"),
    "nan-filter": (
        b"sources:\n - {name: s, adapter: demo, path: a.json, media_root: m, filters: {min_video_s: .nan}}\n",
        "sources.0.filters.min_video_s: Input should be a finite number",
    ),
    "inf-estimate": (
        b"sources:\n - {name: s, adapter: demo, path: a.json, media_root: m}\nestimate: {latency_s: .inf}\n",
        "estimate.latency_s: Input should be a finite number",
    ),
    "inf-filter": (
        b"sources:\n - {name: s, adapter: demo, path: a.json, media_root: m, filters: {max_video_s: -.inf}}\n",
        "sources.0.filters.max_video_s: Input should be a finite number",
    ),
}


def test_nan_and_inf_are_refused_in_adapter_options():
    from pydantic import ValidationError

    from stgr_builder.sources.didemo import DidemoOptions

    for value in (float("inf"), float("nan")):
        with pytest.raises(ValidationError, match="finite number|greater than 0"):
            DidemoOptions.model_validate({"segment_s": value})
    assert DidemoOptions.model_validate({"segment_s": 2.5}).segment_s == 2.5


@pytest.mark.parametrize("case", sorted(_BAD_CONFIGS))
def test_a_config_that_is_no_config_is_one_line_naming_it(tmp_path, case):
    from stgr_builder.errors import StgrError
    from stgr_builder.recipes import resolve_config

    content, expected = _BAD_CONFIGS[case]
    config = tmp_path / f"{case}.yaml"
    config.write_bytes(content)
    result = _stgr("build", str(config), "--out", str(tmp_path / "out"), cwd=tmp_path, timeout=120)
    line = _one_line(result)
    assert result.returncode == 2 and str(config) in line and expected in line, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    with pytest.raises(StgrError, match="finite number|YAML|not a text|empty|no source given"):
        resolve_config(config)  # what `stgr plan` reads


# --- Rejects at scale (issue 21, deliver 4): bad records occupy no shard slot.


#: The temporary Prefect server may take long to start on a loaded machine.
_SLOW_START = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}


def _dataset_files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.parts[-2] != "_cache")


@pytest.fixture(scope="module")
def bad_only_build(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """5,000 bad records (a seeded mix of the four kinds), built with samples_per_shard 16."""
    from helpers.bad_corpus import write_bad_records_source

    folder = tmp_path_factory.mktemp("bad-records")
    config = write_bad_records_source(folder / "src", 5000, seed=21)
    out = folder / "out"
    result = _stgr("build", str(config), "--out", str(out), cwd=folder, env=_env(COLUMNS="200", **_SLOW_START))
    assert result.returncode == 0, result.stderr
    return out, result


def test_bad_records_occupy_no_shard_slot(bad_only_build, tmp_path):
    from helpers.bad_corpus import BAD_RECORD_CODES, bad_record_lines, write_bad_records_source

    out, result = bad_only_build
    # One shard (its three Parquet files and its record), not 5,000 / 16 = 313 of them.
    shard_files = [f for f in _dataset_files(out) if f.endswith(".parquet") or f.startswith("_progress/shard-")]
    assert shard_files == [
        "_progress/shard-00000.json",
        "rejects/part-00000.parquet",
        "stgr_cot/part-00000.parquet",
        "stgr_rl/part-00000.parquet",
    ]
    # Every record is a reject with its kind's code, once.
    expected: dict[str, int] = {}
    for kind, _ in bad_record_lines(5000, seed=21):
        expected[BAD_RECORD_CODES[kind]] = expected.get(BAD_RECORD_CODES[kind], 0) + 1
    counts = dict(query(out, "SELECT code, count(*) FROM rejects GROUP BY code").rows)
    assert counts == expected and query(out, "SELECT count(DISTINCT id) FROM rejects").rows == [(5000,)]
    # The build prints the counts by code with a few examples of each.
    assert "Reject examples (3 per code)" in result.stdout
    assert "no such file" in result.stdout and "'..' in media path" in result.stdout
    # A few bad records give the same files as 5,000.
    few = write_bad_records_source(tmp_path / "src", 40, seed=21)
    small = _stgr("build", str(few), "--out", str(tmp_path / "out"), cwd=tmp_path, env=_env(**_SLOW_START))
    assert small.returncode == 0, small.stderr
    assert _dataset_files(tmp_path / "out") == _dataset_files(out)


def test_rejected_records_keep_exactly_once_on_resume(bad_only_build):
    out, _ = bad_only_build
    before = {f: (out / f).read_bytes() for f in _dataset_files(out) if f.endswith(".parquet")}
    mtimes = {f: (out / f).stat().st_mtime_ns for f in before}
    config = out.parent / "src" / "CONFIG.yaml"
    again = _stgr("build", str(config), "--out", str(out), cwd=out.parent, env=_env(**_SLOW_START))
    assert again.returncode == 0, again.stderr
    assert {f: (out / f).read_bytes() for f in before} == before
    assert {f: (out / f).stat().st_mtime_ns for f in before} == mtimes  # finished: not rewritten


def test_shard_count_follows_the_samples_that_pass(tmp_path):
    from stgr_builder.pipeline import context, plan

    from helpers.bad_corpus import write_bad_records_source

    plans = {}
    for n_bad in (0, 5000):
        config = write_bad_records_source(tmp_path / f"bad{n_bad}", n_bad, seed=21, n_good=40)
        plans[n_bad] = plan(context(config, tmp_path / f"out{n_bad}"))
    assignment = {n: [sorted(s.id for s in shard.samples) for shard in built.shards] for n, built in plans.items()}
    assert len(plans[5000].shards) == len(plans[0].shards) == 3  # 40 samples at 16 per shard
    assert assignment[5000] == assignment[0]
    assert sum(len(shard.rejects) for shard in plans[5000].shards) == 5000
    assert plans[5000].ingest.kept == 40


# --- Ownership everywhere (issue 21, deliver 6): no file the user wrote is replaced.


def test_a_build_never_replaces_the_users_readme_and_plan(tmp_path):
    from helpers.bad_corpus import write_bad_records_source

    config = write_bad_records_source(tmp_path / "src", 8)
    out = tmp_path / "out"
    out.mkdir()
    mine = {"README.md": "# my notes\n", "plan.json": '{"my": "plan"}\n'}
    for name, text in mine.items():
        (out / name).write_text(text)
    for extra in ([], ["--overwrite"]):
        result = _stgr("build", str(config), "--out", str(out), *extra, cwd=tmp_path, env=_env(**_SLOW_START))
        line = _one_line(result)
        assert result.returncode == 2 and "holds plan.json, README.md but no stgr record lists them" in line, line
        assert {name: (out / name).read_text() for name in mine} == mine
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "plan.json"]


def test_export_writes_only_where_it_wrote_before(bad_only_build, tmp_path):
    out, _ = bad_only_build
    theirs = tmp_path / "theirs"
    (theirs / "json_data").mkdir(parents=True)
    (theirs / "json_data" / "STGR-SFT.json").write_text("[my rows]")
    for extra in ([], ["--overwrite"]):
        refused = _stgr("export", "open-o3", str(out), "--to", str(theirs), *extra, cwd=tmp_path)
        assert refused.returncode == 2 and "which no stgr export wrote" in _one_line(refused)
        assert (theirs / "json_data" / "STGR-SFT.json").read_text() == "[my rows]"
    # A folder with the user's videos: refused, unless --overwrite (the videos stay as they are).
    videos = tmp_path / "with-videos"
    (videos / "videos" / "tvg_r1").mkdir(parents=True)
    (videos / "videos" / "tvg_r1" / "a.mp4").write_bytes(b"video")
    refused = _stgr("export", "open-o3", str(out), "--to", str(videos), cwd=tmp_path)
    assert refused.returncode == 2 and "is not empty and no stgr export wrote it" in _one_line(refused)
    assert not (videos / "json_data").exists()
    beside = _stgr("export", "open-o3", str(out), "--to", str(videos), "--overwrite", cwd=tmp_path)
    assert beside.returncode == 0, beside.stderr
    assert (videos / "videos" / "tvg_r1" / "a.mp4").read_bytes() == b"video"
    # Its own export is written again, without --overwrite.
    again = _stgr("export", "open-o3", str(out), "--to", str(videos), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((videos / "json_data" / "STGR-RL.json").read_text()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["export", "open-o3", "{out}", "--to", "/proc/stgr-export"],
        ["audit", "{out}", "--gallery", "/proc/stgr-gallery/g.html"],
    ],
)
def test_an_os_error_is_one_line_and_exit_2(bad_only_build, tmp_path, args):
    out, _ = bad_only_build
    result = _stgr(*[a.format(out=out) for a in args], cwd=tmp_path)
    line = _one_line(result)
    assert result.returncode == 2 and "/proc/stgr-" in line and "Error:" not in line, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_zero_byte_shard_dropped_into_a_build_is_named_by_audit_and_resume(bad_only_build, tmp_path):
    out, _ = bad_only_build
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "stgr_cot" / "part-00007.parquet").write_bytes(b"")
    audit = _stgr("audit", str(copy), cwd=tmp_path)
    line = _one_line(audit)
    assert audit.returncode == 2 and "stgr_cot/part-00007.parquet is empty (0 bytes)" in line, audit.stderr
    config = out.parent / "src" / "CONFIG.yaml"
    resumed = _stgr("build", str(config), "--out", str(copy), cwd=tmp_path, env=_env(**_SLOW_START))
    line = _one_line(resumed)
    assert resumed.returncode == 2 and "part-00007.parquet is empty (0 bytes)" in line and "no stgr record" in line
    assert "Rows by task" not in resumed.stdout  # refused before the build ran, not after


def test_a_rotated_video_gives_rows_with_key_frames_or_rejects(source, tmp_path):
    """v000 re-encoded with a display matrix turning it a quarter turn (what phones write):
    its frames are shown turned; a temporal sample whose object is not found on any turned
    frame (the car) is a no_evidence reject, never a row without key frames."""
    from PIL import Image

    from stgr_builder.pipeline import build

    from helpers.bad_corpus import rotated_copy

    folder = tmp_path / "src"
    shutil.copytree(source, folder)
    video = folder / "media" / "videos" / "v000.mp4"
    rotated_copy(video, video.with_name("turned.mp4"), degrees=90)
    video.with_name("turned.mp4").replace(video)
    out = tmp_path / "out"
    build(folder / "CONFIG.yaml", out)
    empty = query(out, "SELECT id, task FROM cot WHERE len(key_frames) = 0 AND task LIKE 'temporal QA%'").rows
    assert empty == [] and query(
        out, "SELECT count(*) FROM rl WHERE len(key_frames) = 0 AND task LIKE 'temporal QA%'"
    ).rows == [(0,)]
    frames = query(out, "SELECT DISTINCT unnest(key_frames).path FROM cot WHERE video_path = 'videos/v000.mp4'").rows
    assert frames and {Image.open(out / path).size for (path,) in frames} == {(240, 320)}  # turned: 320x240 coded
    rejected = query(out, "SELECT code FROM rejects WHERE message LIKE '%needs at least one key frame%'").rows
    assert rejected and {code for (code,) in rejected} == {"no_evidence"}

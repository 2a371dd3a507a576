"""The plan of a build (``stgr plan``): rows per source and task, what is filtered and why, the
media that are missing and where to get them, and the estimate."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from stgr_builder.models import (
    BuildConfig,
    ImageInfo,
    Plan,
    PlanCount,
    PlanMissing,
    PlanSource,
    Reject,
    RejectCode,
    SourceSample,
    Upstream,
    VideoInfo,
)
from stgr_builder.planning.cost import estimate
from stgr_builder.planning.selection import Probed, Prober, build_shards, draw
from stgr_builder.storage.location import is_url
from stgr_builder.storage.media import list_sizes, media_location


def make_plan(config: BuildConfig, config_dir: Path) -> Plan:
    """Read the sources, apply filters, sampling and dedup; count rows per source and task,
    rejects by reason, missing media; estimate the LLM work. Calls no model, writes nothing."""
    from stgr_builder.sources import ingest

    samples, ingest_rejects, _ = ingest(config, Path(config_dir))
    return plan_of(config, samples, ingest_rejects)


def plan_of(
    config: BuildConfig,
    samples: list[SourceSample],
    ingest_rejects: Iterable[Reject],
    drawn: tuple[list[SourceSample], list[Reject], Probed] | None = None,
) -> Plan:
    """The plan of ingested samples (``drawn``: the result of ``draw`` when already made)."""
    prober = Prober(config)
    read = Counter(s.source for s in samples)
    ingest_rejects = list(ingest_rejects)
    read.update(r.source for r in ingest_rejects)
    kept, draw_rejects, probed = drawn if drawn is not None else draw(config, samples, prober)
    probe_rejects = list(draw_rejects)
    rows: list[tuple[SourceSample, VideoInfo | ImageInfo]] = []
    for sample in kept:
        info = probed.get(sample.id)
        if info is None:
            result = prober(sample)
            if isinstance(result, Reject):
                probe_rejects.append(result)
                continue
            info = result
        rows.append((sample, info))
    media = media_report(config, samples)
    sources = []
    for source in config.sources:
        mine = [r for r in probe_rejects if r.source == source.name]
        referenced, resolved, missing = media.get(source.name, (0, 0, []))
        n_rows = sum(1 for s, _ in rows if s.source == source.name)
        sources.append(
            PlanSource(
                source=source.name,
                adapter=source.adapter,
                read=read.get(source.name, 0),
                ingest_rejects=sum(1 for r in ingest_rejects if r.source == source.name),
                probed=n_rows + len(mine),
                filtered=dict(sorted(Counter(r.code.value for r in mine).items())),
                media_missing=sum(1 for r in mine if r.code is RejectCode.MEDIA_MISSING),
                media_referenced=referenced,
                media_resolved=resolved,
                missing_media=missing,
                wanted=source.sample,
                rows=n_rows,
                shortfall=max(0, source.sample - n_rows) if source.sample is not None else 0,
            )
        )
    # The build deals its samples into shards (pipeline.plan); rejects occupy no slot.
    n_shards = build_shards(config, len(kept))
    counts: Counter = Counter()
    for sample, _ in rows:
        for dataset in sample.datasets:
            counts[(dataset, sample.source, sample.task)] += 1
    return Plan(
        name=config.name,
        seed=config.seed,
        sources=sources,
        counts=[
            PlanCount(dataset=d, source=s, task=t, rows=n)
            for (d, s, t), n in sorted(counts.items(), key=lambda kv: (kv[0][0].value, kv[0][1], kv[0][2].value))
        ],
        estimate=estimate(config, rows, n_shards),
    )


def media_report(config: BuildConfig, samples: list[SourceSample]) -> dict[str, tuple[int, int, list[PlanMissing]]]:
    """Per source: distinct media files its items reference, how many resolve under its media
    root, and the missing ones grouped by the upstream dataset they come from (``upstreams``;
    else by the path's first folder), with where to get them. Only looks for the files (a
    stat each), before any spend; media in a bucket by one listing per folder (``list_sizes``)."""
    upstreams = {source.name: source.upstreams for source in config.sources}
    paths: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for sample in samples:
        rel = sample.video_path or sample.image_path
        if rel:
            paths[sample.source].add((sample.media_root, rel))
    listed = set(list_sizes(media_location(root, rel) for refs in paths.values() for root, rel in refs if is_url(root)))
    report = {}
    for name, refs in paths.items():
        missing: dict[str, list[str]] = defaultdict(list)
        gets: dict[str, str | None] = {}
        for root, rel in sorted(refs):
            # A string join, not a Path (ingest refused '..'): one stat per file, 100,000 of them.
            found = media_location(root, rel) in listed if is_url(root) else os.path.isfile(os.path.join(root, rel))
            if found:
                continue
            upstream, get = _upstream_of(rel, upstreams.get(name, []))
            missing[upstream].append(rel)
            gets[upstream] = get
        groups = [
            PlanMissing(upstream=up, files=len(files), examples=files[:3], get=gets[up])
            for up, files in sorted(missing.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        ]
        report[name] = (len(refs), len(refs) - sum(len(f) for f in missing.values()), groups)
    return report


def _upstream_of(rel: str, upstreams: list[Upstream]) -> tuple[str, str | None]:
    """The upstream whose prefix is the longest start of ``rel``, or 'unknown (FOLDER/)'.

    >>> _upstream_of("clevrer/v1.mp4", [Upstream(name="CLEVRER", prefix="clevrer/", get="http://x")])
    ('CLEVRER', 'http://x')
    """
    matching = [u for u in upstreams if rel.startswith(u.prefix)]
    if matching:
        best = max(matching, key=lambda u: len(u.prefix))
        return best.name, best.get
    head = rel.split("/", 1)[0] + "/" if "/" in rel else "."
    return f"unknown ({head})", None

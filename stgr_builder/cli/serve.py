"""``stgr serve-llm``: the dry-run LLM server on the command line."""

from __future__ import annotations

from typing import Annotated

import typer

from stgr_builder.cli.app import console
from stgr_builder.errors import StgrError


def serve_llm(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (0: any free port)")] = 8088,
    latency_ms: Annotated[float, typer.Option(help="milliseconds from a request's arrival to its reply")] = 0.0,
    fault_rate: Annotated[float, typer.Option(help="share of requests answered with a fault")] = 0.0,
    faults: Annotated[
        str, typer.Option(help="fault kinds: 429,500,timeout,malformed,schema,truncated,dropped,html,huge,hang")
    ] = "429,500,timeout,malformed,schema,truncated,dropped,html,huge,hang",
    seed: Annotated[int, typer.Option(help="seed of the fault draws")] = 0,
    retry_after: Annotated[float, typer.Option(help="seconds in the Retry-After of a 429")] = 0.1,
    hang_s: Annotated[
        float,
        typer.Option(help="seconds a 'timeout' fault waits before replying, and a 'hang' before closing unanswered"),
    ] = 30.0,
    crop_deny: Annotated[str, typer.Option(help="labels the crop check answers 'no' for, comma-separated")] = "",
    rpm: Annotated[
        float | None,
        typer.Option(
            help="requests per minute; past them a 429 with Retry-After (and x-ratelimit-* headers on every reply)"
        ),
    ] = None,
    tpm: Annotated[float | None, typer.Option(help="tokens per minute (prompt tokens + max_tokens), likewise")] = None,
    batch_delay: Annotated[float, typer.Option(help="seconds before a submitted batch is answered (Batch API)")] = 0.2,
    policy: Annotated[
        str, typer.Option(help="oracle: always right; noisy: a VLM's mistakes at seeded rates (see --mistake-rate)")
    ] = "oracle",
    mistake_rate: Annotated[
        float, typer.Option(help="noisy: the rate of each mistake kind (fence, wrong_object, prose_time, ...)")
    ] = 0.15,
    mistakes: Annotated[
        str, typer.Option(help="noisy: per-kind rates overriding --mistake-rate, e.g. 'fence=0.3,length=0'")
    ] = "",
    fix_rate: Annotated[float, typer.Option(help="noisy: chance a re-ask that names a slip fixes it")] = 0.6,
    refuse_json_schema: Annotated[
        bool, typer.Option(help="noisy: answer response_format json_schema with a 400")
    ] = True,
    list_batches: Annotated[
        bool, typer.Option(help="answer GET /v1/batches (--no-list-batches: 404, as some providers do)")
    ] = True,
) -> None:
    """A local OpenAI-compatible server with a deterministic policy, for dry runs and tests."""
    from stgr_builder.dryrun.noisy import MISTAKE_KINDS, options_from
    from stgr_builder.dryrun.server import DryRunServer

    kinds = [k.strip() for k in faults.split(",") if k.strip()]
    try:
        rates = dict.fromkeys(MISTAKE_KINDS, mistake_rate)
        for item in (part.strip() for part in mistakes.split(",") if part.strip()):
            kind, _, rate = item.partition("=")
            rates[kind.strip()] = float(rate)
        noisy = options_from(rates, fix_rate=fix_rate, seed=seed, refuse_json_schema=refuse_json_schema)
        server = DryRunServer(
            policy=policy,
            noisy=noisy,
            host=host,
            port=port,
            latency_ms=latency_ms,
            fault_rate=fault_rate,
            faults=kinds,
            seed=seed,
            retry_after_s=retry_after,
            hang_s=hang_s,
            crop_deny=[d.strip() for d in crop_deny.split(",") if d.strip()],
            rpm=rpm,
            tpm=tpm,
            batch_delay_s=batch_delay,
            list_batches=list_batches,
        )
    except (ValueError, OSError) as exc:
        raise StgrError(f"serve-llm: {exc}") from exc
    console.print(
        f"listening on {server.base_url}  (export OPENAI_BASE_URL={server.base_url} "
        f"OPENAI_API_KEY=anything; GET /stats counts requests)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass

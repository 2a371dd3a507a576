"""The box judge: each chosen box's crop put to an independent model before it is evidence.

After a valid annotation reply, each chosen box's crop is asked "Is this a {name}?" (and, with
``judge.per_sentence``, each sentence's claim of each crop it cites); a box keeps its place with
``judge.threshold`` yes votes of at most ``judge.votes``. The prompt, the reply schema
(``CropVerdicts``) and the parser are ``judge.py``'s; the requests go through the annotator's
judge ``Asker`` (``client.py``): its client, request cache, budget, rate limits and usage.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from stgr_builder.annotate import crops
from stgr_builder.annotate.client import Asker
from stgr_builder.annotate.judge import SCHEMA_NAME as JUDGE_SCHEMA
from stgr_builder.annotate.judge import (
    CropVerdicts,
    JudgeItem,
    chunks,
    judge_messages,
    kept_by_votes,
    parse_judge_prompt,
    sentence_claims,
    verdict_parser,
)
from stgr_builder.annotate.prompts import Prompt
from stgr_builder.annotate.reply import Chosen
from stgr_builder.core import grammar
from stgr_builder.models import JudgeConfig

__all__ = ["BoxJudging", "Judged"]


@dataclass
class Judged:
    """What the judge said of one sample's chosen boxes (and, per sentence, of its claims)."""

    kept: dict[int, Chosen]
    #: (frame idx, box, yes votes) of each kept box.
    box_votes: list[tuple[int, list[float], int]]
    #: The claims (sentence, box) the judge did not confirm in a kept box's crop.
    unconfirmed: list[tuple[str, int]]


class BoxJudging:
    """The crop check of the LLM annotator (``llm.LlmAnnotator``), run after each valid reply."""

    def __init__(self, settings: JudgeConfig, prompt: Prompt, root: Path):
        self.settings = settings
        self.content = parse_judge_prompt(prompt)
        self.prompt = prompt.ref
        self.root = root

    async def judge(self, ask: Asker, chosen: dict[int, Chosen], reasoning: str, reask: str) -> Judged:
        """The chosen boxes the judge confirms (``judge.threshold`` yes votes of at most
        ``judge.votes``), their votes, and (``judge.per_sentence``) the claims it did not
        confirm in a kept box's crop. Each box's question ("Is this a {name}?") and each
        sentence's claim is an item: a crop and its question, nothing else."""
        settings, content, root = self.settings, self.content, self.root
        cids = list(chosen)
        jpegs = await asyncio.gather(
            *(
                asyncio.to_thread(crops.crop_jpeg, root / chosen[c].cand.frame.path, chosen[c].cand.det.box)
                for c in cids
            )
        )
        crop_of = dict(zip(cids, jpegs, strict=True))
        items = [JudgeItem(content.user.format(name=chosen[cid].name), crop_of[cid]) for cid in cids]
        claims: list[tuple[str, int]] = []
        if settings.per_sentence:
            for claim, cited in sentence_claims(reasoning):
                claims += [(claim, cid) for cid in cited if cid in chosen]
            items += [JudgeItem(content.claim.format(claim=claim), crop_of[cid]) for claim, cid in claims]
        votes = await self.verdicts(ask, items, reask)
        box_yes = dict(zip(cids, votes, strict=False))
        kept = {cid: chosen[cid] for cid in cids if box_yes[cid] >= settings.threshold}
        unconfirmed = [
            (claim, cid)
            for (claim, cid), yes in zip(claims, votes[len(cids) :], strict=True)
            if cid in kept and yes < settings.threshold
        ]
        box_votes = [
            (item.cand.frame.idx, grammar.round_box(item.cand.det.box), box_yes[cid]) for cid, item in kept.items()
        ]
        return Judged(kept, box_votes, unconfirmed)

    async def verdicts(self, ask: Asker, items: list[JudgeItem], reask: str) -> list[int]:
        """The yes votes of each item: every item asked once (``judge.crops_per_request`` to a
        request; an item asked twice in a sample is asked once), then the items whose outcome is
        not settled again, up to ``judge.votes`` times."""
        settings = self.settings
        unique = list(dict.fromkeys(items))
        yes = dict.fromkeys(unique, 0)
        open_items = unique
        for vote in range(1, settings.votes + 1):
            groups = chunks(open_items, settings.crops_per_request)
            answers = await asyncio.gather(*(self._ask(ask, group, vote, reask) for group in groups))
            for group, said in zip(groups, answers, strict=True):
                for item, answer in zip(group, said, strict=True):
                    yes[item] += answer
                    ask.count(f"judge.{'yes' if answer else 'no'}")
            open_items = [
                i for i in open_items if kept_by_votes(yes[i], vote, settings.votes, settings.threshold) is None
            ]
            if not open_items:
                break
        return [yes[item] for item in items]

    async def _ask(self, ask: Asker, group: list[JudgeItem], vote: int, reask: str) -> list[bool]:
        """The judge's verdict on each item of one request."""
        return await ask.valid(
            judge_messages(self.content, group, vote),
            self.prompt.version,
            CropVerdicts,
            JUDGE_SCHEMA,
            verdict_parser(len(group)),
            reask,
        )

"""The dry-run server's event judge: "Is this happening here: <event>?" answered from the frame's pixels.

The demo's event questions are about one object of ``DEMO_CLASSES`` crossing the frame ("When
does the red dog run from the left to the right of the frame?"): the object moves for as long
as it is in view, so the event happens on a frame exactly when the object is on it. The shipped
demo detector (``judge.py``'s, on the whole frame) says whether it is: "yes" when it finds the
object the event names. Nothing of the prompt but the event's words is read, so neither the
span nor the answer can sway it.

>>> event_object("the red dog runs from the left to the right of the frame")
'dog'
"""

from __future__ import annotations

import re
from typing import Any

from stgr_builder.dryrun.demo.sprites import DEMO_CLASSES
from stgr_builder.dryrun.judge import DemoJudge

#: The event judge's question (prompts/event-judge.yaml).
EVENT_RE = re.compile(r"Is this happening here: (.+?)\?\s*$", re.MULTILINE)
#: The reply schema of an event verdict (``annotate/events.py``).
SCHEMA_NAME = "event_verdict"


def is_event_question(user_text: str) -> bool:
    return EVENT_RE.match(user_text.lstrip()) is not None


def event_object(event: str) -> str | None:
    """The demo class the event names (the first one, as a word), or None."""
    words = re.findall(r"[a-z]+", event.lower())
    return next((w for w in words if w in DEMO_CLASSES), None)


def event_reply(user_text: str, jpeg: bytes | None, judge: DemoJudge) -> dict[str, Any]:
    """The verdict: "yes" when the detector finds the event's object on the frame."""
    match = EVENT_RE.search(user_text)
    name = event_object(match.group(1)) if match is not None else None
    if name is None or jpeg is None:
        return {"answer": "no"}
    return {"answer": judge.answer(jpeg, name)}

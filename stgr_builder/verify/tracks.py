"""The track gate's rules live in ``core/tracks.py`` (the detect step also asks them which
neighbour frames to detect); the verify stage applies them (``verify/steps.py: TrackGateStep``)."""

from __future__ import annotations

from stgr_builder.core.tracks import MAX_GAP, check_box, gate, sample_names

__all__ = ["MAX_GAP", "check_box", "gate", "sample_names"]

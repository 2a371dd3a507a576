"""What several test modules share: small demo builds, real media fixtures, a corpus of bad
inputs, a tiny GroundingDINO, the track gate's evaluation. Imported as ``helpers.<module>``
(pytest puts ``tests/`` on the path); the kill-and-resume harness that ``bench/`` shares lives in
``stgr_builder.testing``."""

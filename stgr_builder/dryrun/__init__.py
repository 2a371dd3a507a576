"""Stand-ins for the outside world, for dry runs and tests: ``stgr serve-llm`` (an
OpenAI-compatible endpoint with an oracle or a mistake-making policy, ``server.py``), its
mistakes (``noisy.py``) and its judge that looks at a crop's pixels (``judge.py``).

Not a stage: it may use any stage (the judge runs the shipped demo detector)."""

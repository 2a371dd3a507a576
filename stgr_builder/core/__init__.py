"""core: the vocabulary every stage shares, and nothing that runs a stage.

Records live in ``stgr_builder.models`` and errors in ``stgr_builder.errors``; this package
holds the rest of what more than one stage needs:

- ``grammar``   the trace grammar and the answer forms (render and parse, one place)
- ``geometry``  boxes: area, IoU, pixels <-> normalized, an image row's size
- ``gold``      a source's own boxes used as evidence (sampler, detector, annotators, verify)
- ``steps``     the step protocol (``Step``, ``run_steps``) and per-step counters
- ``resources`` per-process resources handed to steps: loaded models with their locks,
                byte-bounded memos, the run's LLM budget
- ``cache``     the one bounded (bytes and entries), thread-safe LRU
- ``hashing``   the one canonical-JSON digest and the one file hash
- ``files``     the one atomic writer (temp name, fsync, rename)
- ``layout``    where things live in a dataset folder (manifest, progress, plan) and reading them
- ``arrow``     the fixed Arrow schema of each dataset, derived from the row models
- ``encode``    an H.264 writer (the demo source, tests and benches make videos with it)
- ``data``      the package's data folders (prompts, schemas, recipes, weights), via importlib.resources
- ``codehash``  the digest of the code a stage runs: part of the keys of its stored results

Rule: ``core`` imports only ``models``, ``errors`` and itself; stage packages import ``core``
and never each other (``tests/test_layers.py`` enforces it).
"""

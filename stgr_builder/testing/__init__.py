"""Tools to test and benchmark builds, shared by ``tests/`` and ``bench/``; no build uses them.

- ``chaos``: kill a build at random moments of each stage, resume it, compare the shards;
- ``demo``: a demo config file over a generated demo source, with sections overridden.
"""

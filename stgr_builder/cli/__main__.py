"""``python -m stgr_builder.cli``: the ``stgr`` command."""

from stgr_builder.cli import main

main()

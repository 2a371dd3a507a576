"""The shipped prompts (``<name>.yaml``), read with importlib.resources as ``stgr_builder.prompts``
(a wheel installs this folder under the package; see stgr_builder/__init__.py)."""

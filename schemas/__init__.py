"""The JSON Schemas generated from stgr_builder.models (``stgr schemas --write``), read with
importlib.resources as ``stgr_builder.schemas`` (a wheel installs this folder under the package)."""

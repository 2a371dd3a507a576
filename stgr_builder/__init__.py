"""stgr-builder: spatio-temporally grounded chain-of-thought datasets for video reasoning."""

__version__ = "0.1.0"

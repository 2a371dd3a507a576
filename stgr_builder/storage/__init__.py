"""Where a build reads and writes: a plain path or a URL (``s3://``, ``gs://``, ``az://``,
``file://``) through fsspec.

``location`` names a place and opens its filesystem, with the install hint of the extra that a
scheme needs. Credentials never pass through here: the filesystems read them from the
environment and their providers' standard chains.

``media`` reads a sample's media wherever they are: a local file as it is, an object through
range reads (its fingerprint) or a bounded local copy (``MediaFiles``, ``LocalCache``).
"""

from stgr_builder.storage.location import Location, filesystem, is_url
from stgr_builder.storage.media import LocalCache, MediaFiles, media_location

__all__ = ["LocalCache", "Location", "MediaFiles", "filesystem", "is_url", "media_location"]

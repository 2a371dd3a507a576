"""Where a build reads and writes: a plain path or a URL (``s3://``, ``gs://``, ``az://``,
``file://``) through fsspec.

``location`` names a place and opens its filesystem, with the install hint of the extra that a
scheme needs. Credentials never pass through here: the filesystems read them from the
environment and their providers' standard chains.

A dataset on object storage: ``output`` (a build on a staging copy committing shard by shard,
``remote_output``; the readers' copy, ``open_dataset``), ``mirror`` (the copy kept in step with
the bucket), ``lease`` (one build per prefix, by conditional create).

``media`` reads a sample's media wherever they are: a local file as it is, an object through
range reads (its fingerprint) or a bounded local copy (``MediaFiles``, ``LocalCache``).
"""

from stgr_builder.storage.lease import Lease
from stgr_builder.storage.location import Location, filesystem, is_url
from stgr_builder.storage.media import LocalCache, MediaFiles, media_location
from stgr_builder.storage.mirror import Mirror
from stgr_builder.storage.output import (
    CommittingJob,
    RemoteOutput,
    beside,
    local_folder,
    open_dataset,
    remote_output,
    staging_root,
)

__all__ = [
    "CommittingJob",
    "Lease",
    "LocalCache",
    "Location",
    "MediaFiles",
    "Mirror",
    "RemoteOutput",
    "beside",
    "filesystem",
    "is_url",
    "local_folder",
    "media_location",
    "open_dataset",
    "remote_output",
    "staging_root",
]

"""A place a build reads or writes: a local path, or a URL on an fsspec filesystem.

>>> Location.parse("s3://bucket/ds").child("stgr_cot", "part-00000.parquet").url
's3://bucket/ds/stgr_cot/part-00000.parquet'
>>> Location.parse("file:///data/ds").local
PosixPath('/data/ds')
>>> Location.parse("outputs/demo").is_remote
False
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stgr_builder.errors import StgrError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")

#: The extra that installs each cloud scheme's filesystem (pyproject's optional dependencies).
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure"}


def is_url(location: str | Path) -> bool:
    """Whether ``location`` names a place on a remote filesystem (``file://`` is local).

    >>> is_url("s3://b/k"), is_url("file:///tmp/x"), is_url("/tmp/x"), is_url(Path("s3:/b"))
    (True, False, False, False)
    """
    if isinstance(location, Path):
        return False
    match = _SCHEME.match(location)
    return match is not None and match.group(1).lower() != "file"


def filesystem(url: str, fresh: bool = False) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem of ``url`` and the path on it, or an error naming the extra to install.

    ``fresh``: a new instance that caches no listing (a remote one only): what a writer that
    must see the bucket as it is now needs; fsspec otherwise shares instances and their listings.
    """
    import fsspec

    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else "file"
    options = {"skip_instance_cache": True, "use_listings_cache": False} if fresh and is_url(url) else {}
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        extra = EXTRAS.get(scheme)
        hint = f": pip install 'stgr-builder[{extra}]'" if extra else ""
        raise StgrError(f"{url}: the {scheme}:// filesystem is not installed{hint}") from exc
    except ValueError as exc:  # fsspec: "Protocol not known"
        raise StgrError(f"{url}: no filesystem for {scheme}:// ({exc})") from exc


#: The errors of a store that the user fixes (credentials, endpoint), by botocore's names.
_NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}
_UNREACHABLE = {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"}


@contextmanager
def store_errors(url: str) -> Iterator[None]:
    """The store's errors a user fixes, as one line (``StgrError``) naming ``url``: no
    credentials, access denied, no such bucket, an endpoint that does not answer. The message
    never holds a credential (botocore's do not)."""
    try:
        yield
    except StgrError:
        raise
    except PermissionError as exc:
        raise StgrError(f"{url}: access denied ({exc}): check the credentials in the environment") from None
    except FileNotFoundError as exc:
        raise StgrError(f"{url}: not found ({exc}): does the bucket exist?") from None
    except Exception as exc:
        kind = type(exc).__name__
        if kind in _NO_CREDENTIALS:
            raise StgrError(
                f"{url}: no credentials found: set them in the environment (AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY, or AWS_PROFILE), or run where an instance role provides them"
            ) from None
        if kind in _UNREACHABLE:
            raise StgrError(f"{url}: the object store does not answer ({exc})") from None
        raise


@dataclass(frozen=True)
class Location:
    """A local folder or file (``local`` set) or a URL on a remote filesystem (``url`` only)."""

    url: str
    local: Path | None = None

    @classmethod
    def parse(cls, location: str | Path, base: Path | None = None) -> Location:
        """A path (relative ones against ``base``), a ``file://`` URL, or a remote URL."""
        if is_url(location):
            return cls(url=str(location).rstrip("/"))
        text = str(location)
        if text.startswith("file://"):
            text = text[len("file://") :]
        path = Path(text).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        return cls(url=str(path), local=path)

    @property
    def is_remote(self) -> bool:
        return self.local is None

    def child(self, *parts: str) -> Location:
        """A place under this one."""
        if self.local is not None:
            return Location(url=str(self.local.joinpath(*parts)), local=self.local.joinpath(*parts))
        return Location(url="/".join([self.url, *parts]))

    def fs(self) -> tuple[Any, str]:
        """The filesystem and the path on it (the local filesystem for a local place)."""
        return filesystem(self.url)

    def __str__(self) -> str:
        return self.url

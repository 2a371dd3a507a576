"""An S3-compatible server on 127.0.0.1 for the object-storage tests: moto's
``ThreadedMotoServer``, reached over real HTTP by the real clients (s3fs, boto3).

The endpoint and the credentials reach the code under test the way a user's do: from the
environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), which botocore's provider chain
reads; nothing is passed in a config.

    def test_x(s3):                      # a fresh bucket per test, the environment set
        url = s3.url("ds")               # "s3://<bucket>/ds"
        s3.fs.ls(s3.bucket)
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Service:
    """One test's view of the server: its endpoint, a bucket of its own and an s3fs client."""

    endpoint: str
    bucket: str

    def env(self) -> dict[str, str]:
        """What a subprocess (the CLI, a Dask or Ray worker) needs in its environment."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def url(self, key: str = "") -> str:
        """``s3://<bucket>/<key>``."""
        return f"s3://{self.bucket}/{key}".rstrip("/")

    @property
    def fs(self):
        import s3fs

        # a fresh instance: fsspec caches instances and their listings, which would hide what
        # the code under test just wrote through its own
        return s3fs.S3FileSystem(endpoint_url=self.endpoint, skip_instance_cache=True, use_listings_cache=False)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on a free port of 127.0.0.1, for the whole session: its endpoint."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> S3Service:
    """A fresh bucket on the session's server, with the endpoint and credentials in the environment."""
    for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(name, value)
    service = S3Service(endpoint=s3_server, bucket=f"stgr-{uuid.uuid4().hex[:12]}")
    service.fs.mkdir(service.bucket)
    return service

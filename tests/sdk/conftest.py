"""Fixtures for the SDK and storage tests: a loopback S3 server and store URIs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ckpt_operator.storage.store import Store
from ckpt_operator.testing.s3 import S3Server, moto_s3


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    with moto_s3() as server:
        yield server


@pytest.fixture
def file_store(tmp_path: Path) -> Store:
    return Store.from_uri(f"file://{tmp_path}/run")


_counter = iter(range(1_000_000))


@pytest.fixture(params=["file", "s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The same test against a local directory and a fresh prefix of the S3 bucket."""
    if request.param == "file":
        return Store.from_uri(f"file://{tmp_path}/run")
    server: S3Server = request.getfixturevalue("s3")
    return Store.from_uri(
        server.uri(f"runs/r{next(_counter)}"), storage_options=server.storage_options
    )

"""A real S3-compatible server on loopback for tests: moto's ``ThreadedMotoServer``."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str
    storage_options: dict[str, Any]
    """What :meth:`ckpt_operator.storage.Store.from_uri` needs to reach the bucket."""

    def uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix.strip('/')}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def moto_s3(bucket: str = "ckpt-test") -> Iterator[S3Server]:
    """Start moto on 127.0.0.1 with a free port and one empty bucket; stop it on exit.

    Fake credentials are set in the environment for the duration, so no real AWS
    configuration on the machine is ever used.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    fake = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        with mock.patch.dict(os.environ, fake):
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            options = {
                "key": fake["AWS_ACCESS_KEY_ID"],
                "secret": fake["AWS_SECRET_ACCESS_KEY"],
                "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            }
            yield S3Server(endpoint, bucket, options)
    finally:
        server.stop()

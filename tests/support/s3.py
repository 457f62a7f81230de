"""An S3 server on this machine for the object-store tests: moto's ``ThreadedMotoServer`` on a free port
of 127.0.0.1, with the environment pointed at it the way a MinIO user would (``AWS_ENDPOINT_URL`` and
static keys; pyarrow, boto3 and Ray's workers read the same variables)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION",
       "AWS_EC2_METADATA_DISABLED")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def s3_server(bucket: str = "bucket") -> Iterator[str]:
    """Serve S3 on 127.0.0.1 with ``bucket`` created; yields the endpoint URL. The AWS_* variables are
    set for the duration (and restored after)."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is a dev dependency (pyproject.toml)")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(AWS_ACCESS_KEY_ID="hardmode-test", AWS_SECRET_ACCESS_KEY="hardmode-test-secret",
                      AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1",
                      AWS_EC2_METADATA_DISABLED="true")
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()

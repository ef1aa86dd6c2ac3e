"""boto3 clients for tests of the embedded AWS's own parts (front, interpreter patches)."""

from __future__ import annotations

import socket
from typing import Any

import boto3
from botocore.config import Config

REGION = "us-east-1"


def client(service: str, endpoint: str | None = None) -> Any:
    """A client that never retries and gives up fast: a request that goes astray fails at once."""
    factory: Any = boto3.client
    return factory(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="ak",
        aws_secret_access_key="sk",
        config=Config(
            retries={"max_attempts": 0, "total_max_attempts": 1}, connect_timeout=2, read_timeout=2
        ),
    )


def dead_endpoint() -> str:
    """A 127.0.0.1 port nothing listens on: a request that leaves the process fails."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

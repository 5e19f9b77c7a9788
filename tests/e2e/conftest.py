"""Starts one `llmlab serve` on the real default model for the whole session.

The binary comes from $LLMLAB_BIN, else $CARGO_TARGET_DIR/debug/llmlab, else
target/debug/llmlab. Only loopback addresses are used; the server is stopped
at the end of the session.
"""
import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _binary() -> str:
    if os.environ.get("LLMLAB_BIN"):
        return os.environ["LLMLAB_BIN"]
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return str(target / "debug" / "llmlab")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `llmlab serve` on a free loopback port."""

    def __init__(self, *extra_args: str, env: dict | None = None, registry: str | None = None):
        port = _free_port()
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [_binary(), "--registry", registry or str(ROOT / "models" / "models.yaml"), "serve",
             "--host", "127.0.0.1", "--port", str(port), *extra_args],
            stdout=subprocess.DEVNULL,
            # A file, not a pipe: nobody reads a pipe while the tests run,
            # and once its 64 KiB fill, the server's next log line blocks
            # the thread writing it (the whole door stalls).
            stderr=self.log,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.base = f"http://127.0.0.1:{port}"

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llmlab serve exited early: {self.logged()}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception:
                pass
            if time.time() > deadline:
                self.proc.kill()
                raise RuntimeError(f"llmlab serve did not become healthy in {timeout} s")
            time.sleep(0.25)

    def logged(self) -> str:
        """What the server has written to stderr so far."""
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.log.close()


@pytest.fixture(scope="session")
def server():
    running = Server()
    running.wait_healthy()
    yield running.base
    running.stop()


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)

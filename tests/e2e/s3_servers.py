"""S3-compatible servers on 127.0.0.1 for the object-tier tests, and a TCP
proxy that can cut or stall the way to them.

- moto (PyPI `moto[server]`): in memory; enforces conditional puts.
- s3s-fs (crates.io, built by tests/setup.sh into ~/.cache/strata/tools):
  keeps objects in a directory and checks request signatures.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import boto3
from botocore.config import Config

ACCESS_KEY = "strata-test"
SECRET_KEY = "strata-test-secret"
S3S_FS_VERSION = "0.14.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3s_fs_binary() -> str:
    explicit = os.environ.get("STRATA_S3S_FS")
    if explicit:
        return explicit
    tools = os.environ.get("STRATA_TOOLS_DIR") or str(Path.home() / ".cache/strata/tools")
    path = Path(tools) / f"s3s-fs-{S3S_FS_VERSION}" / "bin" / "s3s-fs"
    if path.exists():
        return str(path)
    found = shutil.which("s3s-fs")
    if found:
        return found
    raise RuntimeError(f"s3s-fs not found at {path}: run tests/setup.sh")


class S3Server:
    """One server process; `endpoint` is where clients (or a proxy) connect."""

    def __init__(self, kind: str, workdir: Path):
        self.kind = kind
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = workdir / f"{kind}.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "S3Server":
        if self.kind == "moto":
            moto = shutil.which("moto_server")
            if moto is None:
                raise RuntimeError("moto_server not found: run tests/setup.sh")
            args = [moto, "-H", "127.0.0.1", "-p", str(self.port)]
        else:
            data = self.workdir / "data"
            data.mkdir(exist_ok=True)
            args = [s3s_fs_binary(), "--host", "127.0.0.1", "--port", str(self.port),
                    "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY, str(data)]
        self.proc = subprocess.Popen(args, stdout=open(self.log, "a"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.kind} did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self, endpoint: str | None = None):
        return boto3.client(
            "s3", endpoint_url=endpoint or self.endpoint, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def new_bucket(self) -> str:
        """A fresh bucket name (the broker creates the bucket itself)."""
        return f"strata-{uuid.uuid4().hex[:12]}"

    def broker_env(self, endpoint: str | None = None) -> dict[str, str]:
        """The standard AWS variables a broker reads."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
        }

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        s3 = self.client()
        out, token = [], None
        while True:
            kw = {"Bucket": bucket, "Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            r = s3.list_objects_v2(**kw)
            out += [o["Key"] for o in r.get("Contents", [])]
            if not r.get("IsTruncated"):
                return out
            token = r["NextContinuationToken"]

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()


class Proxy:
    """A TCP proxy to `target` that can pass traffic, refuse connections
    (closing those open), or stall them (accept and never answer)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.mode = "pass"
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_mode(self, mode: str) -> None:
        assert mode in ("pass", "refuse", "stall")
        with self.lock:
            self.mode = mode
            if mode != "pass":
                for s in self.open:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                        s.close()
                    except OSError:
                        pass
                self.open.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                mode = self.mode
            if mode == "refuse":
                client.close()
                continue
            if mode == "stall":
                with self.lock:
                    self.open.append(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.set_mode("refuse")
        self.listener.close()

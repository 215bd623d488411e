"""Clusters for the end-to-end tests: a real etcd (Debian's etcd-server) and
strata brokers on 127.0.0.1, 127.0.0.2 and 127.0.0.3, all on one Kafka port
number, like separate hosts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable

from conftest import Broker, BrokerError

ETCD = shutil.which("etcd") or "/usr/bin/etcd"

#: Session timeout of test clusters: short, so failover tests are quick.
SESSION_MS = 3000


def free_port(hosts: tuple[str, ...] = ("127.0.0.1",)) -> int:
    """A TCP port free on every one of `hosts`."""
    for _ in range(100):
        s = socket.socket()
        s.bind((hosts[0], 0))
        port = s.getsockname()[1]
        s.close()
        ok = True
        for h in hosts[1:]:
            t = socket.socket()
            try:
                t.bind((h, port))
            except OSError:
                ok = False
            finally:
                t.close()
        if ok:
            return port
    raise RuntimeError(f"no port free on all of {hosts}")


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Polls `check` until it returns something truthy; fails naming `what`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = check()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last_error = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


class Etcd:
    """One etcd member (on 127.0.0.1 unless told), restartable on its data directory."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1", tls: dict[str, Path] | None = None):
        """`tls`: PEM files `ca`, `cert`, `key` (the server's) for https with
        client certificates required (`--client-cert-auth`), and `client_cert`,
        `client_key` for the health check."""
        self.workdir = workdir
        self.host = host
        self.tls = tls
        self.data = workdir / "etcd-data"
        self.log = workdir / "etcd.log"
        self.client_port = free_port((host,))
        self.peer_port = free_port((host,))
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.client_port}"

    def start(self) -> "Etcd":
        peer = f"http://{self.host}:{self.peer_port}"
        args = [
            ETCD, "--name", "default", "--data-dir", str(self.data),
            "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}",
        ]
        if self.tls:
            args += ["--cert-file", str(self.tls["cert"]), "--key-file", str(self.tls["key"]),
                     "--trusted-ca-file", str(self.tls["ca"]), "--client-cert-auth"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(self.healthy, 20, f"etcd at {self.endpoint}")
        return self

    def healthy(self) -> bool:
        try:
            context = None
            if self.tls:
                import ssl
                context = ssl.create_default_context(cafile=str(self.tls["ca"]))
                context.load_cert_chain(str(self.tls["client_cert"]), str(self.tls["client_key"]))
            with urllib.request.urlopen(self.endpoint + "/health", timeout=1, context=context) as r:
                return json.loads(r.read()).get("health") == "true"
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(20)


class Cluster:
    """Brokers 0..n-1 on 127.0.0.(i+1), one Kafka port, one etcd, one cluster name."""

    def __init__(self, binary: Path, workdir: Path, etcd: Etcd, n: int = 3,
                 config: dict[str, Any] | None = None, name: str | None = None,
                 env: dict[str, str] | None = None, first_host: int = 1):
        self.binary = binary
        self.workdir = workdir
        self.etcd = etcd
        self.name = name or f"c{uuid.uuid4().hex[:10]}"
        self.hosts = tuple(f"127.0.0.{i + first_host}" for i in range(n))
        self.port = free_port(self.hosts)
        self.brokers: list[Broker] = []
        for i, host in enumerate(self.hosts):
            cfg: dict[str, Any] = json.loads(json.dumps(config or {}))
            cluster = cfg.setdefault("cluster", {})
            cluster.setdefault("etcd_endpoints", [etcd.endpoint])
            cluster.setdefault("name", self.name)
            cluster.setdefault("broker_id", i)
            cluster.setdefault("session_timeout_ms", SESSION_MS)
            cluster.setdefault("etcd_request_timeout_ms", 2000)
            cluster.setdefault("controlled_shutdown_timeout_ms", 5000)
            wd = workdir / f"broker{i}"
            wd.mkdir(parents=True, exist_ok=True)
            self.brokers.append(Broker(binary, wd, cfg, env=env, host=host))

    # -- lifecycle ---------------------------------------------------------- #
    def start(self) -> "Cluster":
        for b in self.brokers:
            b.start(port=self.port)
        self.wait_for(lambda s: len(s["brokers"]) == len(self.brokers) and s["controller"] is not None,
                      what="every broker registered and a controller elected")
        return self

    def stop(self) -> list[str]:
        problems = []
        for b in self.brokers:
            rc = b.unexpected_exit()
            if rc is not None:
                problems.append(f"broker at {b.host} died with exit code {rc}\n{b.stderr_tail()}")
            elif b.running:
                try:
                    b.stop()
                except BrokerError as e:
                    problems.append(str(e))
        return problems

    # -- views -------------------------------------------------------------- #
    @property
    def bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.brokers if b.running)

    def running(self, exclude: int | None = None) -> list[Broker]:
        return [b for i, b in enumerate(self.brokers) if b.running and i != exclude]

    def status(self, via: int | None = None) -> dict:
        """`GET /v1/cluster` from broker `via` (default: any running broker)."""
        brokers = [self.brokers[via]] if via is not None else self.running()
        last: Exception | None = None
        for b in brokers:
            try:
                with urllib.request.urlopen(b.http + "/v1/cluster", timeout=5) as r:
                    return json.loads(r.read())
            except OSError as e:
                last = e
        raise AssertionError(f"no broker answered /v1/cluster: {last}")

    def wait_for(self, check: Callable[[dict], Any], what: str, timeout: float = 30.0,
                 via: int | None = None) -> dict:
        def probe():
            s = self.status(via)
            return s if check(s) else None
        return wait_until(probe, timeout, what)

    def controller(self, via: int | None = None) -> int | None:
        return self.status(via)["controller"]

    def partitions(self, topic: str, via: int | None = None) -> dict[int, dict]:
        s = self.status(via)
        for t in s["topics"]:
            if t["name"] == topic:
                return {p["partition"]: p for p in t["partitions"]}
        return {}


def produce_one(bootstrap: str, topic: str, partition: int, value: bytes, timeout: float = 30.0):
    """Produces one message with acks=all; returns (error, offset)."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                  "message.timeout.ms": int(timeout * 1000), "linger.ms": 0})
    out: list = []
    p.produce(topic, value, partition=partition, on_delivery=lambda err, msg: out.append((err, msg)))
    p.flush(timeout + 5)
    err, msg = out[0]
    return err, (msg.offset() if err is None else None)


def env_messages(default: int) -> int:
    return int(os.environ.get("STRATA_E2E_MESSAGES", str(default)))


def isr(c: Cluster, topic: str) -> dict[int, list[int]]:
    return {i: p["isr"] for i, p in c.partitions(topic).items()}


class Firewall:
    """iptables rules on loopback addresses, in a chain of their own."""

    CHAIN = "STRATA-E2E"

    def __init__(self):
        self._run("-N", self.CHAIN, check=False)
        self._run("-F", self.CHAIN)
        if self._run("-C", "OUTPUT", "-j", self.CHAIN, check=False) != 0:
            self._run("-I", "OUTPUT", "-j", self.CHAIN)

    @staticmethod
    def _run(*args: str, check: bool = True) -> int:
        r = subprocess.run(["iptables", *args], capture_output=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"iptables {' '.join(args)}: {r.stderr.decode()}")
        return r.returncode

    def cut(self, a: str, others: list[str]) -> None:
        """Drops every packet between `a` and each of `others`, both ways."""
        for o in others:
            self._run("-A", self.CHAIN, "-s", a, "-d", o, "-j", "DROP")
            self._run("-A", self.CHAIN, "-s", o, "-d", a, "-j", "DROP")

    def block_port(self, port: int) -> None:
        """Drops every packet to a local TCP port (a server that stopped answering)."""
        self._run("-A", self.CHAIN, "-p", "tcp", "--dport", str(port), "-j", "DROP")

    def heal(self) -> None:
        self._run("-F", self.CHAIN)

    def close(self) -> None:
        self.heal()
        self._run("-D", "OUTPUT", "-j", self.CHAIN, check=False)
        self._run("-X", self.CHAIN, check=False)

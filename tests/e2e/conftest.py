"""Pytest fixtures for Strata's end-to-end tests.

Every test talks to a real ``strata`` binary through real Kafka clients. The
binary is taken from ``$STRATA_BIN`` or, failing that, from
``$CARGO_TARGET_DIR/debug/strata`` (``CARGO_TARGET_DIR`` defaults to
``~/.cache/strata/target``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from e2e_support import create_topic as _create_topic

LISTENING_RE = re.compile(r"^kafka listening on (127\.\d+\.\d+\.\d+):(\d+)$")
HTTP_RE = re.compile(r"^http listening on (127\.\d+\.\d+\.\d+):(\d+)$")
LISTENER_RE = re.compile(r"^kafka listener (\S+) \(\w+\) on (127\.\d+\.\d+\.\d+):(\d+)$")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


def strata_binary() -> Path:
    explicit = os.environ.get("STRATA_BIN")
    if explicit:
        return Path(explicit)
    target = os.environ.get("CARGO_TARGET_DIR") or str(Path.home() / ".cache/strata/target")
    return Path(target) / "debug" / "strata"


# --------------------------------------------------------------------------- #
# TOML (only what the broker config needs: scalars and one level of tables)
# --------------------------------------------------------------------------- #
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"unsupported TOML value {value!r}")


def _is_tables(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def to_toml(config: dict[str, Any]) -> str:  # noqa: D103
    lines = [f"{k} = {_toml_value(v)}" for k, v in config.items()
             if not isinstance(v, dict) and not _is_tables(v)]
    for section, table in config.items():
        if isinstance(table, dict):
            lines.append(f"\n[{section}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
        elif _is_tables(table):
            for t in table:
                lines.append(f"\n[[{section}]]")
                lines.extend(f"{k} = {_toml_value(v)}" for k, v in t.items())
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- #
# Broker process
# --------------------------------------------------------------------------- #
class BrokerError(RuntimeError):
    pass


class Broker:
    """One strata process, restartable on the same data directory."""

    def __init__(self, binary: Path, workdir: Path, config: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None, host: str = "127.0.0.1"):
        self.binary = binary
        self.host = host
        self.extra_env = dict(env or {})
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.stderr_path = workdir / "strata.stderr.log"
        self.stdout_path = workdir / "strata.stdout.log"
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = workdir / "strata.toml"
            self.config_path.write_text(to_toml(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.http_port: int | None = None
        # Every listener's bound port by name (`default` is `port`).
        self.listener_ports: dict[str, int] = {}
        self.starts = 0
        self._exit_expected = False
        self._stdout_thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------- #
    def start(self, port: int | None = None) -> "Broker":
        """Starts the process (again): on `port`, by default the one it had."""
        if port is None:
            port = self.port or 0
        if self.running:
            raise BrokerError("broker already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(self.binary), "serve",
            "--data-dir", str(self.data_dir),
            "--kafka-listen", f"{self.host}:{port}",
            "--http-listen", f"{self.host}:0",
        ]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        self.starts += 1
        with open(self.stderr_path, "ab") as err:
            err.write(f"\n===== start #{self.starts}: {' '.join(args)}\n".encode())
            err.flush()
            env = dict(os.environ)
            env.setdefault("RUST_BACKTRACE", "1")
            env.update(self.extra_env)
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env
            )
        self._exit_expected = False
        ready = threading.Event()
        found: dict[str, int] = {}
        self._stdout_thread = threading.Thread(
            target=self._pump_stdout, args=(self.proc, ready, found), daemon=True
        )
        self._stdout_thread.start()

        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.wait(0.05):
            if self.proc.poll() is not None:
                self._exit_expected = True
                raise BrokerError(
                    f"strata exited with code {self.proc.returncode} before listening\n"
                    f"{self.stderr_tail()}"
                )
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                self._exit_expected = True
                raise BrokerError(
                    f"no 'kafka listening on' line within {START_TIMEOUT_S}s\n{self.stderr_tail()}"
                )
        self.port = found["port"]
        if port:
            assert self.port == port, f"asked for port {port}, broker reports {self.port}"
        return self

    def _pump_stdout(self, proc: subprocess.Popen[bytes], ready: threading.Event, found: dict) -> None:
        assert proc.stdout is not None
        with open(self.stdout_path, "ab") as out:
            for raw in proc.stdout:
                out.write(raw)
                out.flush()
                if not ready.is_set():
                    line = raw.decode(errors="replace").rstrip("\r\n")
                    h = HTTP_RE.match(line)
                    if h:
                        self.http_port = int(h.group(2))
                    lm = LISTENER_RE.match(line)
                    if lm:
                        self.listener_ports[lm.group(1)] = int(lm.group(3))
                    m = LISTENING_RE.match(line)
                    if m:
                        found["port"] = int(m.group(2))
                        ready.set()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def http(self) -> str:
        """Base URL of the broker's HTTP API."""
        assert self.http_port is not None, "no 'http listening on' line seen"
        return f"http://{self.host}:{self.http_port}"

    def listener(self, name: str) -> str:
        """`host:port` of the named listener."""
        return f"{self.host}:{self.listener_ports[name]}"

    @property
    def bootstrap(self) -> str:
        assert self.port is not None, "broker never started"
        return f"{self.host}:{self.port}"

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait; the broker must exit cleanly (code 0)."""
        assert self.proc is not None
        self._exit_expected = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise BrokerError(f"strata did not exit within {timeout}s of SIGTERM\n{self.stderr_tail()}")
        self._join_stdout()
        rc = self.proc.returncode
        if rc != 0:
            raise BrokerError(f"strata exited with code {rc} after SIGTERM\n{self.stderr_tail()}")
        return rc

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, "broker not running"
        self._exit_expected = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._join_stdout()

    def wait_for_crash(self, timeout: float) -> int:
        """Waits for the process to die by itself (a fault point); returns its code."""
        assert self.proc is not None
        self._exit_expected = True
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BrokerError(f"strata did not crash within {timeout}s\n{self.stderr_tail()}")
        self._join_stdout()
        assert rc != 0, "expected a crash, got a clean exit"
        return rc

    def restart(self, same_port: bool = True) -> "Broker":
        if self.running:
            self.stop()
        return self.start(port=self.port if same_port and self.port else 0)

    def _join_stdout(self) -> None:
        if self._stdout_thread is not None:
            self._stdout_thread.join(5)

    # -- diagnostics -------------------------------------------------------- #
    def unexpected_exit(self) -> int | None:
        """Exit code if the process died without being asked to."""
        if self.proc is None or self._exit_expected:
            return None
        return self.proc.poll()

    def stderr_tail(self, lines: int = 80) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no stderr captured)"
        tail = text.splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.stderr_path} ---\n" + "\n".join(tail)


# --------------------------------------------------------------------------- #
# Fixtures
# --------------------------------------------------------------------------- #
_BROKERS = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def strata_bin() -> Path:
    binary = strata_binary()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(
            f"strata binary not found at {binary}; build it with `cargo build -p strata` "
            "or point STRATA_BIN at it",
            pytrace=False,
        )
    return binary


@pytest.fixture
def broker_factory(strata_bin: Path, tmp_path: Path, request: pytest.FixtureRequest):
    """``broker_factory(config=None)`` starts a broker in a fresh data dir."""
    brokers: list[Broker] = []
    request.node.stash[_BROKERS] = brokers

    def start(config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Broker:
        workdir = tmp_path / f"broker{len(brokers)}"
        workdir.mkdir()
        broker = Broker(strata_bin, workdir, config, env)
        brokers.append(broker)
        return broker.start()

    yield start

    problems = []
    for b in brokers:
        rc = b.unexpected_exit()
        if rc is not None:
            problems.append(f"strata ({b.workdir}) died during the test with exit code {rc}\n{b.stderr_tail()}")
        elif b.running:
            try:
                b.stop()
            except BrokerError as e:
                problems.append(str(e))
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def broker(broker_factory) -> Broker:
    return broker_factory()


@pytest.fixture
def create_topic() -> Callable[..., str]:
    """``create_topic(broker, name, partitions=1, config=None)`` via AdminClient."""

    def create(broker: Broker, name: str, partitions: int = 1, config: dict[str, str] | None = None) -> str:
        return _create_topic(broker.bootstrap, name, partitions, config)

    return create


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for b in item.stash.get(_BROKERS, []):
            report.sections.append((f"strata stderr ({b.workdir.name})", b.stderr_tail()))


# --------------------------------------------------------------------------- #
# S3-compatible servers on 127.0.0.1 (installed by tests/setup.sh)
# --------------------------------------------------------------------------- #
from s3_servers import S3Server  # noqa: E402


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    server = S3Server("moto", tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3s_fs(tmp_path_factory):
    server = S3Server("s3s-fs", tmp_path_factory.mktemp("s3s-fs")).start()
    yield server
    server.stop()


@pytest.fixture(params=["moto", "s3s-fs"])
def s3(request):
    """Each S3-compatible test server in turn."""
    return request.getfixturevalue("moto" if request.param == "moto" else "s3s_fs")


# --------------------------------------------------------------------------- #
# Clusters: one etcd per test module, clusters made per test
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    from cluster_support import Etcd

    e = Etcd(tmp_path_factory.mktemp("etcd")).start()
    yield e
    e.stop()


@pytest.fixture
def cluster_factory(strata_bin, tmp_path, etcd):
    """Starts clusters (`config`, `etcd_override` for another etcd, and
    cluster_support.Cluster's keyword arguments) and stops them after the
    test, failing it if a broker died on its own."""
    from cluster_support import Cluster

    made = []

    def make(config: dict | None = None, etcd_override=None, **kwargs):
        c = Cluster(strata_bin, tmp_path / f"cluster{len(made)}", etcd_override or etcd, config=config, **kwargs)
        made.append(c)
        return c.start()

    yield make
    problems = []
    for c in made:
        problems += c.stop()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)

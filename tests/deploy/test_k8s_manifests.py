"""deploy/k8s/: every core object is valid Kubernetes 1.30 (kubernetes-validate's bundled schemas,
offline, strict), the KEDA ScaledObject's fields are right, and the manifests agree with the app:
settings names and values, ports, probes' routes, the queue, the storage path, the image tag."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"  # the oldest minor still in upstream support when this was written
yaml = pytest.importorskip("yaml")


def _objects() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def _one(kind: str, name: str) -> dict:
    (found,) = [o for o in _objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _container(deployment: str) -> dict:
    (container,) = _one("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return container


def _env(deployment: str) -> dict[str, str]:
    """The container's environment: its ConfigMaps' data, then its own ``env`` values."""
    container = _container(deployment)
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        values.update(_one("ConfigMap", source["configMapRef"]["name"])["data"])
    values.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return values


def _project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_the_objects_are_all_there():
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in _objects())
    assert kinds == sorted([
        ("ConfigMap", "swinxseg-config"), ("ConfigMap", "swinxseg-prometheus"),
        ("Deployment", "swinxseg-api"), ("Deployment", "swinxseg-redis"), ("Deployment", "swinxseg-worker"),
        ("PersistentVolumeClaim", "swinxseg-jobs"), ("PersistentVolumeClaim", "swinxseg-redis-data"),
        ("ScaledObject", "swinxseg-worker"), ("Service", "swinxseg-api"), ("Service", "swinxseg-redis"),
    ])


def test_core_objects_follow_the_kubernetes_schema():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    core = [o for o in _objects() if not o["apiVersion"].startswith("keda.sh/")]
    for obj in core:
        # strict: a misspelt or misplaced field fails instead of being ignored by the API server
        assert kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True) == "1.30", obj["metadata"]["name"]


def test_the_validator_refuses_a_wrong_object():
    """The schema check above can fail: an unknown field and a wrong type are both refused."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    worker = _one("Deployment", "swinxseg-worker")
    misspelt = {**worker, "spec": {**worker["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    wrong_type = {**worker, "spec": {**worker["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)


def test_every_swinxseg_variable_is_a_setting_and_its_value_is_accepted(monkeypatch):
    named = set(re.findall(r"\bSWINXSEG_[A-Z0-9_]+", "".join(p.read_text() for p in K8S.glob("*.yaml"))))
    assert named, "the manifests configure the app through SWINXSEG_* variables"
    fields = {f"SWINXSEG_{name.upper()}" for name in Settings.model_fields}
    assert named <= fields, named - fields
    for deployment in ("swinxseg-api", "swinxseg-worker"):
        for key in [k for k in os.environ if k.startswith("SWINXSEG_")]:
            monkeypatch.delenv(key)
        for key, value in _env(deployment).items():
            monkeypatch.setenv(key, value)
        Settings()  # raises ValidationError for a value the app refuses


def test_api_ports_probes_and_service_match_the_app():
    container, env = _container("swinxseg-api"), _env("swinxseg-api")
    (port,) = container["ports"]
    assert port["containerPort"] == int(env["SWINXSEG_PORT"]) == Settings().port == 8000
    assert re.search(rf"^EXPOSE {port['containerPort']}$", (REPO / "Dockerfile").read_text(), re.M)
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    routes = (REPO / "service" / "api" / "routes_ops.py").read_text()
    assert '"/readyz"' in routes and '"/healthz"' in routes
    _check_service_reaches("swinxseg-api")
    annotations = _one("Deployment", "swinxseg-api")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])


def _check_service_reaches(name: str) -> None:
    service, deployment = _one("Service", name), _one("Deployment", name)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names


def test_worker_asks_for_one_gpu_limits_memory_probes_and_runs_as_non_root():
    spec = _one("Deployment", "swinxseg-worker")["spec"]["template"]["spec"]
    container, env = _container("swinxseg-worker"), _env("swinxseg-worker")
    assert container["args"] == ["worker"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["memory"].endswith("Gi")
    (port,) = container["ports"]
    assert port["containerPort"] == int(env["SWINXSEG_WORKER_METRICS_PORT"]) == Settings().worker_metrics_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": port["name"]}, probe
    annotations = _one("Deployment", "swinxseg-worker")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    app_uid = int(re.search(r"^ARG APP_UID=(\d+)$", (REPO / "Dockerfile").read_text(), re.M).group(1))
    for name in ("swinxseg-api", "swinxseg-worker"):
        pod = _one("Deployment", name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == app_uid != 0
        (c,) = pod["containers"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert spec["terminationGracePeriodSeconds"] >= 600  # a running case finishes on SIGTERM


def test_api_and_workers_share_the_queue_and_the_storage():
    api, worker = _env("swinxseg-api"), _env("swinxseg-worker")
    for key in ("SWINXSEG_QUEUE_URL", "SWINXSEG_QUEUE_NAME", "SWINXSEG_STORAGE_DIR"):
        assert api[key] == worker[key], key
    url = urlsplit(api["SWINXSEG_QUEUE_URL"])
    redis_service = _one("Service", "swinxseg-redis")
    assert url.scheme == "redis" and url.hostname == redis_service["metadata"]["name"]
    assert url.port == redis_service["spec"]["ports"][0]["port"]
    for name in ("swinxseg-api", "swinxseg-worker"):
        pod = _one("Deployment", name)["spec"]["template"]["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert claims[mounts[api["SWINXSEG_STORAGE_DIR"]]] == "swinxseg-jobs", name
    assert _one("PersistentVolumeClaim", "swinxseg-jobs")["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "/workspace/jobs" in (REPO / "Dockerfile").read_text()  # created owned by the non-root user


def test_keda_scales_the_workers_on_the_celery_queue_down_to_zero():
    """No CRD schema is vendored (KEDA's is large and not ours to copy): its fields are checked here
    against the KEDA 2.x ScaledObject reference and the redis (lists) scaler's parameters."""
    scaled = _one("ScaledObject", "swinxseg-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "idleReplicaCount",
                         "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers"}
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "swinxseg-worker"}
    assert spec["minReplicaCount"] == 0 < spec["maxReplicaCount"]
    assert all(isinstance(spec[k], int) and spec[k] > 0 for k in ("pollingInterval", "cooldownPeriod"))
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    assert set(meta) <= {"address", "host", "port", "listName", "listLength", "activationListLength",
                         "databaseIndex", "enableTLS", "unsafeSsl", "usernameFromEnv", "passwordFromEnv",
                         "addressFromEnv", "hostFromEnv", "portFromEnv"}
    assert all(isinstance(v, str) for v in meta.values())  # KEDA's metadata is a map of strings
    url = urlsplit(_env("swinxseg-worker")["SWINXSEG_QUEUE_URL"])
    assert meta["address"] == f"{url.hostname}:{url.port}"
    assert meta["databaseIndex"] == url.path.strip("/")
    # The Celery queue is a Redis list named like the queue (service/queue/celery_app.py).
    assert meta["listName"] == _env("swinxseg-worker")["SWINXSEG_QUEUE_NAME"] == Settings().queue_name
    assert int(meta["listLength"]) >= 1 and int(meta["activationListLength"]) == 0


def test_images_are_the_tag_compose_builds():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    tag = f"swinxseg:{_project_version()}"
    assert compose["services"]["swinxseg"]["image"] == tag
    for name in ("swinxseg-api", "swinxseg-worker"):
        assert _container(name)["image"] == tag, name
    redis_image = _container("swinxseg-redis")["image"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+", redis_image), "pin the Redis tag"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (make prometheus)")
def test_the_prometheus_scrape_config_is_valid_and_keeps_the_annotated_pods(tmp_path):
    config = yaml.safe_load(_one("ConfigMap", "swinxseg-prometheus")["data"]["prometheus.yml"])
    (job,) = config["scrape_configs"]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    # Debian's promtool is built without Kubernetes discovery: the rest (relabelling, regexes,
    # timeouts) is checked with a static target in its place.
    job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr

    rules = job["relabel_configs"]
    keep = [r for r in rules if r.get("action") == "keep"]
    (address,) = [r for r in rules if r.get("target_label") == "__address__"]
    for name in ("swinxseg-api", "swinxseg-worker"):
        template = _one("Deployment", name)["spec"]["template"]["metadata"]
        assert re.fullmatch(keep[0]["regex"], template["labels"]["app.kubernetes.io/part-of"])
        assert re.fullmatch(keep[1]["regex"], template["annotations"]["prometheus.io/scrape"])
        # The pod's discovered address (first declared port) becomes the annotated metrics port.
        joined = f"10.1.2.3:8000;{template['annotations']['prometheus.io/port']}"
        target = re.sub(rf"^{address['regex']}$", address["replacement"].replace("$", "\\"), joined)
        assert target == f"10.1.2.3:{template['annotations']['prometheus.io/port']}"

"""Static checks of the deployment artefacts (no Docker engine or cluster needed).

hadolint on the Dockerfile, Debian's `docker-compose config` on the compose file, yamllint,
`kubectl kustomize` of the base and every overlay into kubernetes-validate, the manifests'
wiring (selectors, ports, probes, ConfigMap keys against the service settings), and the
Grafana dashboard against the metrics the service really exports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
PROMETHEUS_DEBIAN = REPO / "docker" / "prometheus-debian" / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.yaml"
PROMETHEUS_CONFIG = REPO / "docker" / "prometheus" / "prometheus.yml"
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "hubert-lstm.json"
DATASOURCES = REPO / "docker" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
KUSTOMIZATIONS = ["k8s/base", "k8s/overlays/cpu", "k8s/overlays/model-volume"]
# Oldest Kubernetes the manifests target (preStop `sleep` is on by default from 1.30).
K8S_MIN_VERSION = "1.31.0"
APP_LABEL = {"app.kubernetes.io/name": "hubert-lstm"}
# Prometheus adds these to every series; `le` is a histogram bucket's bound.
SCRAPE_LABELS = {"job", "instance", "le"}


# ------------------------------------------------------------------ helpers (also used by
# tests/test_deploy_prometheus.py)


def find_tool(name: str) -> str | None:
    """The venv's copy of a CLI tool (pinned by the dev extra) or else the one on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    return shutil.which(name)


def require_tool(name: str) -> str:
    """Path of `name`, or skip the test when it is not installed."""
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed (make setup installs it)")
    return path


def run_tool(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a CLI tool from the repository root and fail the test with its output on error."""
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def service_metrics_text() -> str:
    """The service's /metrics exposition with one observation on every metric.

    Built from the service's own registry (`app.metrics.Metrics`) so that labelled families
    show their samples as they do under traffic.
    """
    from app.metrics import Metrics

    m = Metrics()
    m.requests.labels(route="/v1/audio/transcriptions", method="POST", status="200").inc()
    m.request_duration.labels(route="/v1/audio/transcriptions").observe(0.2)
    m.on_queue_depth(3)
    m.on_batch(
        size=4,
        padded_frames=2000,
        padding_ratio=0.1,
        queue_waits=[0.01] * 4,
        inference_seconds=0.05,
        audio_seconds=40.0,
    )
    m.on_error("bad_request")
    m.on_decode_failure("undecodable")
    m.model_ready.set(1)
    return m.render().decode()


_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def exposed_series(text: str) -> dict[str, set[str]]:
    """Series names a scrape of `text` yields, each with its label names (`le` included)."""
    from prometheus_client.parser import text_string_to_metric_families

    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        labels = {name for sample in family.samples for name in sample.labels}
        for suffix in _SAMPLE_SUFFIXES.get(family.type, ("",)):
            series[family.name + suffix] = set(labels)
    return series


def dashboard_targets() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of the dashboard."""
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            yield panel, target


def concrete_expr(expr: str, rate_window: str = "1m") -> str:
    """A dashboard expression with Grafana's variables replaced (job as in the scrape config)."""
    return (
        expr.replace("$__rate_interval", rate_window)
        .replace("$job", "hubert-lstm")
        .replace("$instance", ".*")
    )


_PROMQL_METRIC = re.compile(r"\b(hlstm_[a-z0-9_]+)\b")


def kustomize(path: str) -> list[dict[str, Any]]:
    """The manifests `kubectl kustomize <path>` renders."""
    kubectl = require_tool("kubectl")
    out = run_tool([kubectl, "kustomize", path]).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@cache
def _rendered(path: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(path))


def one(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    """The single object of `kind` among the rendered documents."""
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a matchLabels selector matches a label set."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ------------------------------------------------------------------ Dockerfile


def test_hadolint_passes() -> None:
    hadolint = require_tool("hadolint")
    for dockerfile in (DOCKERFILE, PROMETHEUS_DEBIAN):
        run_tool([hadolint, "--config", "docker/hadolint.yaml", str(dockerfile.relative_to(REPO))])


def _stages(text: str) -> dict[str, list[str]]:
    """Dockerfile instructions per stage name (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            name = line.split()[-1] if " AS " in line.upper() else f"stage{len(stages)}"
            current = stages.setdefault(name, [])
        current.append(line)
    return stages


def _global_args(text: str) -> dict[str, str]:
    """The build arguments declared before the first FROM, with their defaults."""
    args: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("FROM "):
            break
        if line.startswith("ARG "):
            name, _, default = line[4:].partition("=")
            args[name.strip()] = default.strip()
    return args


def test_dockerfile_outside_sources_are_build_args_with_public_defaults() -> None:
    """Every image, the uv image, the Python source and the torch index are build arguments,
    and their defaults are the public sources users build from."""
    text = DOCKERFILE.read_text()
    args = _global_args(text)
    assert args["CUDA_BASE"].startswith("nvidia/cuda:") and "runtime" in args["CUDA_BASE"]
    assert args["CPU_BASE"] == args["BUILDER_BASE"] == "ubuntu:24.04"
    assert args["UV_IMAGE"].startswith("ghcr.io/astral-sh/uv:")
    assert args["PYTHON_SOURCE"] == "uv" and args["VARIANT"] == "cuda"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    stage_names = set(_stages(text))
    for lines in _stages(text).values():
        image = lines[0].split()[1]
        # An argument, or an earlier stage (possibly picked by an argument: builder-${VARIANT}).
        local = image.split("${")[0]
        assert image.startswith("${") or any(n.startswith(local) for n in stage_names), (
            f"{lines[0]}: an outside image that is not a build argument"
        )
    # No package host is named outside the argument defaults.
    body = "\n".join(ln for ln in text.splitlines() if not ln.startswith(("ARG ", "#")))
    assert not re.findall(r"https?://(?!127\.0\.0\.1[:/])\S+", body)


def test_dockerfile_variants_and_runtime_contract() -> None:
    stages = _stages(DOCKERFILE.read_text())
    assert stages["runtime-cuda"][0] == "FROM ${CUDA_BASE} AS runtime-cuda"
    assert stages["runtime-cpu"][0] == "FROM ${CPU_BASE} AS runtime-cpu"
    cpu_builder = " ".join(stages["builder-cpu"])
    assert '--index-url "${TORCH_INDEX_URL}"' in cpu_builder, "CPU torch from the CPU index"
    assert "TORCH_INDEX_URL" not in " ".join(stages["builder-cuda"])

    runtime = stages["runtime"]
    users = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "must run as non-root"
    health = [line for line in runtime if line.startswith("HEALTHCHECK")]
    assert len(health) == 1 and "/readyz" in health[0]
    assert any(line.split()[1:] == ["models", "/models"] for line in runtime)
    # The venv comes from the dependency stages, the project in a layer of its own after it.
    copies = [line for line in runtime if line.startswith("COPY --from=")]
    assert copies.index("COPY --from=deps /opt/venv /opt/venv") < copies.index(
        "COPY --from=builder /opt/project/ /"
    )
    # ... and those stages take nothing from the context but pyproject.toml, so README and code
    # edits leave the multi-GB venv layer cached.
    for name in (
        "python-uv",
        "python-system",
        "builder-base",
        "builder-cpu",
        "builder-cuda",
        "deps",
    ):
        context_copies = [
            line.split()[1:-1]
            for line in stages[name]
            if line.startswith(("COPY ", "ADD ")) and "--from=" not in line
        ]
        assert all(srcs == ["pyproject.toml"] for srcs in context_copies), (name, context_copies)
    assert "EXPOSE 8000" in runtime
    entry = next(line for line in runtime if line.startswith("ENTRYPOINT"))
    cmd = next(line for line in runtime if line.startswith("CMD"))
    assert json.loads(entry.split(None, 1)[1]) == ["hubert-lstm"]
    assert json.loads(cmd.split(None, 1)[1])[:3] == ["serve", "--model-dir", "/models/default"]


def test_dockerignore_keeps_what_the_build_copies() -> None:
    """The context is an allow-list: every COPY source is allowed, the venv and data are not."""
    rules = [
        r.strip()
        for r in (REPO / ".dockerignore").read_text().splitlines()
        if r.strip() and not r.startswith("#")
    ]
    assert rules[0] == "*"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    sources = set()
    for lines in _stages(DOCKERFILE.read_text()).values():
        for line in lines:
            parts = line.split()
            if parts[0] == "COPY" and not parts[1].startswith("--from"):
                sources.update(parts[1:-1])
    assert sources, "no COPY from the build context found"
    # A source is kept when it or something under it is allowed (models/ holds default/ and,
    # when the checkout has one, streaming/).
    missing = {
        s
        for s in sources
        if not any(a == s.rstrip("/") or a.startswith(s.rstrip("/") + "/") for a in allowed)
    }
    assert not missing, f"COPY sources excluded by .dockerignore: {missing}"
    assert {"models/default", "models/streaming"} <= allowed
    assert not allowed & {".venv", "data", "runs", "cache"}


# ------------------------------------------------------------------ compose


@cache
def _compose_config() -> dict[str, Any]:
    compose = require_tool("docker-compose")
    out = run_tool([compose, "-f", str(COMPOSE), "--profile", "gpu", "--profile", "cpu", "config"])
    return yaml.safe_load(out.stdout)


def test_compose_config_profiles_and_gpu_reservation() -> None:
    services = _compose_config()["services"]
    assert {"hlstm-gpu", "hlstm-cpu", "prometheus", "grafana"} <= set(services)

    gpu, cpu = services["hlstm-gpu"], services["hlstm-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d.get("driver") == "nvidia" for d in devices)
    assert "deploy" not in cpu or "devices" not in str(cpu["deploy"])
    assert gpu["build"]["args"]["VARIANT"] == "cuda" and cpu["build"]["args"]["VARIANT"] == "cpu"
    for svc, device in ((gpu, "cuda"), (cpu, "cpu")):
        assert svc["build"]["dockerfile"] == "docker/Dockerfile"
        assert Path(svc["build"]["context"]).resolve() == REPO
        assert svc["command"][svc["command"].index("--device") + 1] == device
        assert "/readyz" in " ".join(svc["healthcheck"]["test"])
        assert svc["read_only"] is True and any(t.startswith("/tmp") for t in svc["tmpfs"])
        # Prometheus scrapes one name whichever profile runs.
        assert "hlstm" in svc["networks"]["default"]["aliases"]
        assert any(str(v).endswith(":/models/extra:ro") for v in svc["volumes"])
    # Neither profile starts the monitoring twice: they have no profile.
    assert "profiles" not in services["prometheus"] and "profiles" not in services["grafana"]


def test_compose_environment_is_valid_service_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import Settings

    for name in ("hlstm-gpu", "hlstm-cpu"):
        env = _compose_config()["services"][name]["environment"]
        for key, value in env.items():
            assert key.startswith("HLSTM_")
            assert key[6:].lower() in Settings.model_fields, f"{name}: unknown setting {key}"
            if value is not None:
                monkeypatch.setenv(key, str(value))
        Settings()  # raises on a value the service would reject


def test_compose_mounts_monitoring_config() -> None:
    services = _compose_config()["services"]
    prom_mounts = " ".join(str(v) for v in services["prometheus"]["volumes"])
    assert f"{PROMETHEUS_CONFIG.parent}:/etc/prometheus" in prom_mounts
    graf_mounts = " ".join(str(v) for v in services["grafana"]["volumes"])
    assert f"{REPO / 'docker/grafana/provisioning'}:/etc/grafana/provisioning" in graf_mounts
    assert f"{DASHBOARD.parent}:/etc/grafana/dashboards" in graf_mounts
    provider = yaml.safe_load(
        (REPO / "docker/grafana/provisioning/dashboards/hubert-lstm.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"

    # The scrape target is the service's alias and port.
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "hubert-lstm")
    assert job["static_configs"][0]["targets"] == ["hlstm:8000"]
    assert job.get("metrics_path", "/metrics") == "/metrics"


# ------------------------------------------------------------------ yamllint


def test_yamllint_clean() -> None:
    yamllint = require_tool("yamllint")
    run_tool([yamllint, "--strict", "-c", ".yamllint.yaml", "docker", "k8s", ".yamllint.yaml"])


# ------------------------------------------------------------------ Kubernetes


_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h))+$"}
# The ServiceMonitor is a CRD that kubernetes-validate has no schema for: check the fields we
# use against the Prometheus Operator's monitoring.coreos.com/v1 API, strictly.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "labels": {"type": "object", "additionalProperties": {"type": "string"}}
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "minProperties": 1,
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "namespaceSelector": {"type": "object"},
                "jobLabel": {"type": "string"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                            "honorLabels": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}


def _validate_all(docs: tuple[dict[str, Any], ...]) -> list[str]:
    """Validation errors of the rendered documents (built-in kinds strictly, CRDs by schema)."""
    import jsonschema
    import kubernetes_validate

    errors = []
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "ServiceMonitor":
            errors += [f"{name}: {e.message}" for e in jsonschema.Draft7Validator(
                SERVICE_MONITOR_SCHEMA).iter_errors(doc)]  # fmt: skip
            continue
        for version in (K8S_MIN_VERSION, kubernetes_validate.latest_version()):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{name} (k8s {version}): {e.message} at {list(e.path)}")
    return errors


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kustomize_output_validates(path: str) -> None:
    docs = _rendered(path)
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
        "ConfigMap",
    } <= kinds
    assert _validate_all(docs) == []


def test_validation_catches_mistakes() -> None:
    """The schema check is not vacuous: a misspelt field and a bad ServiceMonitor fail."""
    docs = [json.loads(json.dumps(d)) for d in _rendered("k8s/base")]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    errors = _validate_all(tuple(docs))
    assert any("Deployment" in e and "readinessprobe" in e for e in errors), errors
    assert any("ServiceMonitor" in e and "intervall" in e for e in errors), errors


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_manifests_are_wired_together(path: str) -> None:
    docs = _rendered(path)
    deployment, service = one(docs, "Deployment"), one(docs, "Service")
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == APP_LABEL
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(service["spec"]["selector"], pod_labels)
    assert selects(one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)

    container = pod["spec"]["containers"][0]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port_names == {"http": 8000}
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])

    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    ref = hpa["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert hpa["minReplicas"] >= 2, "a PDB with one replica blocks node drains"
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["metrics"])

    policy = one(docs, "NetworkPolicy")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], pod_labels)
    assert any(p["port"] == 8000 for rule in policy["ingress"] for p in rule["ports"])

    monitor = one(docs, "ServiceMonitor")["spec"]
    assert selects(monitor["selector"]["matchLabels"], service["metadata"]["labels"])
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert all(e["port"] in service_ports and e["path"] == "/metrics" for e in monitor["endpoints"])

    # Config comes from the generated ConfigMap (name with its content hash).
    config = one(docs, "ConfigMap")
    refs = [e["configMapRef"]["name"] for e in container["envFrom"]]
    assert refs == [config["metadata"]["name"]]
    assert "$(HLSTM_MODEL_DIR)" in container["args"] and "$(HLSTM_DEVICE)" in container["args"]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_pod_probes_and_security(path: str) -> None:
    pod = one(_rendered(path), "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "time to load + warm"

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])

    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert kind in resources["requests"] and kind in resources["limits"]


def test_gpu_base_and_cpu_overlay_differ_where_it_matters() -> None:
    base = one(_rendered("k8s/base"), "Deployment")["spec"]["template"]["spec"]
    cpu = one(_rendered("k8s/overlays/cpu"), "Deployment")["spec"]["template"]["spec"]
    gpu_res = base["containers"][0]["resources"]
    assert gpu_res["requests"]["nvidia.com/gpu"] == gpu_res["limits"]["nvidia.com/gpu"] == "1"
    assert base["containers"][0]["image"].endswith("-cuda")
    assert "nvidia.com/gpu" not in json.dumps(cpu["containers"][0]["resources"])
    assert "tolerations" not in cpu
    assert cpu["containers"][0]["image"].endswith("-cpu")
    assert one(_rendered("k8s/base"), "ConfigMap")["data"]["HLSTM_DEVICE"] == "cuda"
    assert one(_rendered("k8s/overlays/cpu"), "ConfigMap")["data"]["HLSTM_DEVICE"] == "cpu"


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_the_try_it_page_is_off_on_kubernetes(path: str) -> None:
    assert one(_rendered(path), "ConfigMap")["data"]["HLSTM_DEMO_PAGE"] == "false"


def test_model_volume_overlay_mounts_the_claim() -> None:
    docs = _rendered("k8s/overlays/model-volume")
    claim = one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert volume["persistentVolumeClaim"]["claimName"] == claim
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    model_dir = one(docs, "ConfigMap")["data"]["HLSTM_MODEL_DIR"]
    assert mount["readOnly"] is True and model_dir.startswith(mount["mountPath"] + "/")


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_configmap_is_valid_service_settings(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import Settings

    data = one(_rendered(path), "ConfigMap")["data"]
    for key, value in data.items():
        if key.startswith("HLSTM_"):
            assert key[6:].lower() in Settings.model_fields, f"unknown setting {key}"
            monkeypatch.setenv(key, value)
    Settings()  # raises on a value the service would reject


# ------------------------------------------------------------------ dashboard


def test_dashboard_metrics_exist_in_service_output() -> None:
    series = exposed_series(service_metrics_text())
    used: set[str] = set()
    for panel, target in dashboard_targets():
        expr = target["expr"]
        names = set(_PROMQL_METRIC.findall(expr))
        assert names or "up{" in expr, f"panel {panel['title']!r} queries no service metric"
        missing = names - set(series)
        assert not missing, f"panel {panel['title']!r}: {missing} not in /metrics"
        labels = set().union(*(series[n] for n in names)) | SCRAPE_LABELS
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            unknown = {g.strip() for g in group.split(",")} - labels
            assert not unknown, f"panel {panel['title']!r}: no label {unknown} on {names}"
        used |= names
    # The panels the issue asks for, by the metric behind each.
    assert {
        "hlstm_requests_total",
        "hlstm_request_duration_seconds_bucket",
        "hlstm_queue_depth",
        "hlstm_batch_size_bucket",
        "hlstm_batch_padding_ratio_bucket",
        "hlstm_audio_seconds_total",
        "hlstm_errors_total",
    } <= used


def test_dashboard_structure_and_datasource() -> None:
    dash = json.loads(DASHBOARD.read_text())
    uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("requests", "p50", "p99", "queue", "batch size", "padding", "audio", "errors"):
        assert topic in titles, f"no panel about {topic}"
    for panel, target in dashboard_targets():
        assert panel["datasource"]["uid"] == uid and target["datasource"]["uid"] == uid
        assert target["refId"] and target["expr"].strip()
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0
    variables = {v["name"] for v in dash["templating"]["list"]}
    for _, target in dashboard_targets():
        used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
        assert used <= variables

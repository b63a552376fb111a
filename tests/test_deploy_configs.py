"""The deployment files parse and say what their tools require: the Ray cluster-launcher YAMLs
validate against the schema inside the installed ``ray`` package, the KubeRay manifests carry
KubeRay's required fields, the SLURM script starts a head, workers and the sweep in that order
(run with stand-ins for srun/scontrol/ray/segssl), and the images pin what pyproject.toml allows.
No Docker engine, Kubernetes or SLURM is available where this runs."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
DOCKER = REPO / "docker"


def ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("name", ["ray-cluster.yaml", "ray-cluster-onprem.yaml"])
def test_cluster_launcher_yaml_validates_against_rays_schema(name: str) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((CLUSTER / name).read_text())
    jsonschema.validate(cfg, ray_schema())
    validate_config(prepare_config(copy.deepcopy(cfg)))  # what `ray up` runs first
    broken = copy.deepcopy(cfg)
    broken["min_workers"] = 3  # a key the schema does not know (the old template had it)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, ray_schema())


def test_cloud_cluster_has_gpu_workers_on_the_segssl_image() -> None:
    cfg = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    assert cfg["provider"]["type"] in {"aws", "gcp", "azure"}
    assert "segssl" in cfg["docker"]["image"] and "cuda" in cfg["docker"]["image"]
    workers = [t for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 1 for t in workers)


def _k8s_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / "kuberay" / name).read_text()) if d]


def _check_pod_template(tpl: dict, where: str) -> list[dict]:
    containers = tpl["spec"]["containers"]
    assert containers, f"{where}: no containers"
    for c in containers:
        assert c["name"] and "segssl" in c["image"], where
        for env in c.get("env", []):  # credentials only from Secrets
            if "PASSWORD" in env["name"] or "USERNAME" in env["name"]:
                assert "secretKeyRef" in env["valueFrom"], (where, env["name"])
    return containers


def _check_ray_cluster_spec(spec: dict, where: str) -> None:
    import ray

    assert spec["rayVersion"] == ray.__version__, "manifests must run the Ray segssl pins"
    head = spec["headGroupSpec"]
    for params in [head["rayStartParams"]] + [
        w["rayStartParams"] for w in spec["workerGroupSpecs"]
    ]:
        assert all(isinstance(v, str) for v in params.values()), "rayStartParams are strings"
    (head_c, *_) = _check_pod_template(head["template"], f"{where} head")
    ports = {p["containerPort"] for p in head_c["ports"]}
    assert {6379, 8265} <= ports
    assert spec["workerGroupSpecs"]
    for w in spec["workerGroupSpecs"]:
        assert w["groupName"]
        assert w["minReplicas"] <= w["replicas"] <= w["maxReplicas"]
        cs = _check_pod_template(w["template"], f"{where} {w['groupName']}")
        assert any("nvidia.com/gpu" in c["resources"]["limits"] for c in cs), where


def test_kuberay_raycluster_manifest() -> None:
    docs = _k8s_docs("raycluster.yaml")
    (rc,) = [d for d in docs if d["kind"] == "RayCluster"]
    assert rc["apiVersion"] == "ray.io/v1" and rc["metadata"]["name"]
    _check_ray_cluster_spec(rc["spec"], "RayCluster")
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    vols = rc["spec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    used = {v["persistentVolumeClaim"]["claimName"] for v in vols if "persistentVolumeClaim" in v}
    assert used <= claims


def test_kuberay_rayjob_manifest_runs_a_real_segssl_sweep_command() -> None:
    from typer.testing import CliRunner

    from segssl.cli import app

    (job,) = _k8s_docs("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["submissionMode"] in {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
    assert spec["shutdownAfterJobFinishes"] is True
    _check_ray_cluster_spec(spec["rayClusterSpec"], "RayJob")
    args = spec["entrypoint"].split()
    assert args[:2] == ["segssl", "sweep"]
    helptext = CliRunner().invoke(app, ["sweep", "--help"], terminal_width=200).output
    for flag in [a for a in args if a.startswith("--")]:
        assert flag in helptext, f"RayJob entrypoint uses {flag}, which segssl sweep lacks"


SHIM = """#!/bin/bash
echo "$(basename "$0") $*" >> "$SHIM_LOG"
case "$(basename "$0")" in
  scontrol) printf 'gpu-node-1\\ngpu-node-2\\ngpu-node-3\\n' ;;
  srun) case "$*" in *hostname*) echo "10.1.2.3 fe80::1" ;; esac ;;
  python) echo 3 ;;
  segssl) exit "${SEGSSL_RC:-0}" ;;
esac
exit 0
"""


@pytest.mark.parametrize("rc", [0, 1])
def test_slurm_script_starts_head_workers_then_the_sweep(tmp_path: Path, rc: int) -> None:
    script = CLUSTER / "slurm" / "segssl-sweep.sbatch"
    text = script.read_text()
    directives = dict(
        re.match(r"#SBATCH --([\w-]+)(?:=(.*))?", ln).groups()  # type: ignore[union-attr]
        for ln in text.splitlines()
        if ln.startswith("#SBATCH")
    )
    assert directives["ntasks-per-node"] == "1" and "signal" in directives
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("scontrol", "srun", "ray", "python", "segssl"):
        (bindir / tool).write_text(SHIM)
        (bindir / tool).chmod(0o755)
    log = tmp_path / "calls.log"
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "SHIM_LOG": str(log),
        "SLURM_JOB_NODELIST": "gpu-node-[1-3]",
        "SLURM_JOB_ID": "4242",
        "SLURM_CPUS_PER_TASK": "16",
        "SLURM_GPUS_PER_TASK": "4",
        "SEGSSL_STORAGE": "/shared/runs",
        "SEGSSL_RC": str(rc),
        "HOME": str(tmp_path),
    }
    res = subprocess.run(
        ["bash", str(script), "sweep.yaml", "--extend"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert res.returncode == rc, res.stderr
    calls = log.read_text().splitlines()
    port = 6400 + 4242 % 1000
    heads = [c for c in calls if c.startswith("srun") and "--head" in c]
    workers = [c for c in calls if c.startswith("srun") and f"--address=10.1.2.3:{port}" in c]
    sweep = [c for c in calls if c.startswith("segssl")]
    assert len(heads) == 1 and "-w gpu-node-1" in heads[0]
    assert f"--port={port}" in heads[0] and "--num-gpus=4" in heads[0]
    assert sorted(w.split("-w ")[1].split()[0] for w in workers) == ["gpu-node-2", "gpu-node-3"]
    assert sweep == [
        f"segssl sweep sweep.yaml --address 10.1.2.3:{port} --storage /shared/runs --no-live "
        "--extend"
    ]
    assert calls.index(heads[0]) < calls.index(workers[0]) < calls.index(sweep[0])


def _pins() -> dict[str, Version]:
    pins = {}
    for ln in (DOCKER / "constraints.txt").read_text().splitlines():
        ln = ln.split("#")[0].strip()
        if ln:
            name, _, ver = ln.partition("==")
            pins[canonicalize_name(name)] = Version(ver)
    return pins


def test_image_pins_match_pyproject() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in meta["dependencies"] + meta["optional-dependencies"]["cluster"]]
    pins = _pins()
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in pins, f"docker/constraints.txt pins no version of {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"docker/constraints.txt pins {req.name}=={pins[name]}, outside pyproject's {req}"
        )
    ci_torch = re.search(r"torch==([\d.]+)", (REPO / ".ci" / "run").read_text())
    assert ci_torch and Version(ci_torch.group(1)) == pins["torch"]
    requires = SpecifierSet(meta["requires-python"])
    for df in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (DOCKER / df).read_text()
        arg = re.search(r"ARG TORCH_VERSION=([\d.]+)", text)
        assert arg and Version(arg.group(1)) == pins["torch"], df
        assert "-c docker/constraints.txt" in text and ".[cluster]" in text, df
        for src in re.findall(r"^COPY (\S+)", text, flags=re.M):
            assert (REPO / src).exists(), f"{df} copies {src}, missing from the repository"
    cpu_from = re.search(
        r"^FROM python:(\d+\.\d+\.\d+)-slim-(\w+)",
        (DOCKER / "Dockerfile.cpu").read_text(),
        flags=re.M,
    )
    assert cpu_from and requires.contains(cpu_from.group(1)) and cpu_from.group(2) == "bookworm"
    cuda = (DOCKER / "Dockerfile.cuda").read_text()
    base = re.search(
        r"^FROM nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime-ubuntu24\.04", cuda, flags=re.M
    )
    index = re.search(r"whl/cu(\d+)", cuda)
    assert base and index and index.group(1) == base.group(1) + base.group(2)  # cu126 on 12.6


def test_compose_stack() -> None:
    doc = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = doc["services"]
    assert {"postgres", "mlflow", "ray-head", "ray-worker"} <= set(services)
    mlflow = services["mlflow"]
    env = mlflow["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://mlflow@postgres:")
    assert mlflow["command"][-1].endswith("cluster/scripts/mlflow-server.sh")
    for svc in services.values():  # secrets only from the environment, never literal
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET", key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value)), (key, value)
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port
    assert "--address=ray-head:6379" in services["ray-worker"]["command"]
    assert os.path.isfile(DOCKER / "initdb" / "10-mlflow-auth.sql")


def test_ci_installs_cpu_torch_and_runs_apt_noninteractively_under_sudo() -> None:
    """CI's first install is the pinned torch, checked to be the CPU build (an unpinned or CUDA
    torch is GBs); no index beyond pip's configuration is named (CI reaches only the package
    registries). ``sudo`` resets the environment, so DEBIAN_FRONTEND must be set inside the
    sudo'd command, not before it."""
    lines = (REPO / ".ci" / "run").read_text().replace("\\\n", " ").splitlines()
    torch_line = next(ln for ln in lines if "pip install" in ln and "torch==" in ln)
    assert "index-url" not in torch_line, torch_line
    pip_lines = [ln for ln in lines if "pip install" in ln and "upgrade pip" not in ln]
    assert pip_lines[0] == torch_line, "torch must be installed before the project"
    assert any("+cpu" in ln for ln in lines[lines.index(torch_line) :]), "CPU build not checked"
    apt = next(ln for ln in lines if "apt-get install" in ln)
    assert re.search(r"\$sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install", apt), apt
    update = next(i for i, ln in enumerate(lines) if "apt-get update" in ln)
    assert update < lines.index(apt)

"""What deploys, checked offline: `make deploy-check`.

- deploy/k8s: every manifest against the Kubernetes schemas of versions 1.35 and 1.37
  (kubernetes-validate, strict: an unknown field fails). The MongoDB replica set is an
  operator's custom resource: no schema for it ships with Kubernetes, so its metadata is
  checked as any object's and its spec only for what the other manifests rely on.
- checkov on deploy/k8s and both Dockerfiles: no failed check, every skip with its reason.
- compose.yaml through `docker-compose config` (the Compose file schema; no engine needed),
  and the container's nginx.conf through `nginx -t`.
- What the files must agree on: names, selectors, ports, grace periods.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from scripts.cluster import generate_certificate
from scripts.devserver import ROOT

pytestmark = pytest.mark.deploy

K8S = ROOT / "deploy" / "k8s"
NGINX = ROOT / "deploy" / "nginx"
KUBERNETES_VERSIONS = ["1.35.0", "1.37.0"]
CUSTOM_KINDS = {"MongoDBCommunity"}


def manifests() -> dict[str, dict[str, Any]]:
    """Every object in deploy/k8s by kind (one object per file, one file per kind)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        assert len(documents) == 1, path
        assert documents[0]["kind"] not in found, path
        found[documents[0]["kind"]] = documents[0]
    return found


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_passes_the_kubernetes_schemas(version: str) -> None:
    objects = manifests()
    assert set(objects) >= {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "Ingress",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Job",
        "MongoDBCommunity",
    }
    for kind, manifest in objects.items():
        if kind in CUSTOM_KINDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(manifest, version, strict=True)
            # Its metadata is an ObjectMeta like any other object's.
            as_plain_object = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": manifest["metadata"],
            }
            kubernetes_validate.validate(as_plain_object, version, strict=True)
        else:
            kubernetes_validate.validate(manifest, version, strict=True)


def test_the_schema_check_rejects_an_unknown_field() -> None:
    deployment = manifests()["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def hypercorn_graceful_timeout() -> int:
    """hypercorn_conf.py's graceful_timeout, read without running the file (it starts things)."""
    tree = ast.parse((ROOT / "hypercorn_conf.py").read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and getattr(node.targets[0], "id", "") == "graceful_timeout"
        ):
            return int(ast.literal_eval(node.value))
    raise AssertionError("hypercorn_conf.py sets no graceful_timeout")


def test_the_manifests_agree_with_each_other_and_with_the_app() -> None:
    objects = manifests()
    deployment, job = objects["Deployment"], objects["Job"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]

    assert all(
        obj["metadata"]["namespace"] == "todo-api" for k, obj in objects.items() if k != "Namespace"
    )
    assert objects["Service"]["spec"]["selector"].items() <= labels.items()
    assert (
        objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    )
    assert objects["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert objects["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"].items() <= (
        job["spec"]["template"]["metadata"]["labels"].items()
    )
    assert (
        objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"]
        == (deployment["metadata"]["name"])
    )
    backend = objects["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == objects["Service"]["metadata"]["name"]

    # Probes on the app's own routes; hypercorn finishes in-flight requests before the kill.
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > pause + hypercorn_graceful_timeout()

    # The migration runs the release's own command, against the same database.
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "python",
        "-m",
        "app",
        "db",
        "upgrade",
    ]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == container["image"]

    # MONGO_URI is the connection string the operator writes: <name>-<auth db>-<user>.
    replica_set = objects["MongoDBCommunity"]
    user = replica_set["spec"]["users"][0]
    expected_secret = f"{replica_set['metadata']['name']}-{user['db']}-{user['name']}"
    for spec in (pod["spec"], job["spec"]["template"]["spec"]):
        env = {item["name"]: item for item in spec["containers"][0]["env"]}
        assert env["MONGO_URI"]["valueFrom"]["secretKeyRef"]["name"] == expected_secret
    assert replica_set["spec"]["members"] >= 3
    assert {"name": "readWrite", "db": objects["ConfigMap"]["data"]["MONGO_DB"]} in user["roles"]

    for spec in (pod["spec"], job["spec"]["template"]["spec"]):
        for each in spec["containers"]:
            context = each["securityContext"]
            assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
            assert context["capabilities"]["drop"] == ["ALL"]
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] > 0


def checkov(*arguments: str) -> dict[str, Any]:
    program = os.environ.get("CHECKOV") or shutil.which("checkov")
    assert program, "checkov is not installed: run `make deploy-check`"
    result = subprocess.run(
        [program, "--skip-download", "--output", "json", "--compact", *arguments],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.mark.parametrize(
    "arguments",
    [
        ["--framework", "kubernetes", "--directory", "deploy/k8s"],
        ["--framework", "dockerfile", "--file", "Dockerfile", "--file", "deploy/nginx/Dockerfile"],
    ],
    ids=["kubernetes", "dockerfiles"],
)
def test_checkov_finds_nothing_and_every_skip_says_why(arguments: list[str]) -> None:
    report = checkov(*arguments)
    summary = report["summary"]
    failed = [
        (check["check_id"], check["resource"], check["file_path"])
        for check in report["results"]["failed_checks"]
    ]
    assert summary["failed"] == 0, failed
    assert summary["passed"] > 40
    for check in report["results"]["skipped_checks"]:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) > 20, check["check_id"]


def test_compose_file_passes_the_compose_schema() -> None:
    program = shutil.which("docker-compose")
    assert program, "docker-compose is not installed: run `make deploy-check`"
    result = subprocess.run(
        [program, "--file", "compose.yaml", "config", "--quiet"],
        cwd=ROOT,
        env={**os.environ, "JWT_SECRET_KEY": "x" * 64},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_compose_publishes_only_the_proxy_in_front_of_its_replicas() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"proxy"}
    built = {name for name, service in services.items() if service.get("build") == "."}
    apis = {name for name in built if "command" not in services[name]}
    assert len(apis) == 2
    # The release step: the image's `db upgrade`, once, before either replica starts.
    assert services["migrate"]["command"] == ["python", "-m", "app", "db", "upgrade"]
    assert not services["migrate"].get("ports")
    upstreams = set(re.findall(r"server (\S+):8000", (NGINX / "nginx.conf").read_text()))
    assert upstreams == apis
    proxy_address = services["proxy"]["networks"]["edge"]["ipv4_address"]
    mongos = {
        name for name, service in services.items() if "--replSet" in service.get("command", [])
    }
    assert len(mongos) == 3
    init = "\n".join(services["mongo-init"]["command"])
    assert all(f'host: "{name}:27017"' in init for name in mongos)
    for name in apis:
        environment = services[name]["environment"]
        assert environment["TRUSTED_PROXIES"] == f"{proxy_address}/32"
        assert environment["TRUSTED_PROXY_COUNT"] == "1"
        assert all(f"{mongo}:27017" in environment["MONGO_URI"] for mongo in mongos)
        assert "replicaSet=" in environment["MONGO_URI"]
        assert services[name]["depends_on"]["mongo-init"] == {
            "condition": "service_completed_successfully"
        }
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }


def test_the_container_nginx_configuration_is_valid(tmp_path: Path) -> None:
    """deploy/nginx/nginx.conf under `nginx -t`, its paths moved under tmp_path and the
    replicas' names (resolved when nginx loads) pointed at the loopback."""
    text = (NGINX / "nginx.conf").read_text()
    text = re.sub(r"server api-\d:8000", "server 127.0.0.1:9", text)
    text = text.replace("/tmp/nginx", str(tmp_path / "run"))
    text = text.replace("include todo-api/", f"include {NGINX}/")
    text = text.replace("include mime.types", "include /etc/nginx/mime.types")
    text = text.replace("listen 8080", "listen 127.0.0.1:1").replace(
        "listen 8443", "listen 127.0.0.1:2"
    )
    (tmp_path / "run").mkdir()
    generate_certificate(tmp_path / "tls")
    config = tmp_path / "nginx.conf"
    config.write_text(text)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr

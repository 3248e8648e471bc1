"""The rendered manifests: probes, security context, config checksums, secrets, trainer, monitors, GPU."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.helm.chart_render import CHART, NAMESPACE, Helm, Rendered, ci_names

Render = Callable[[str | None], Rendered]
BARP_CONTAINERS = ("barp-sidecar", "barp-trainer")


def barp_containers(rendered: Rendered) -> list[tuple[str, dict[str, Any]]]:
    return [(n, c) for n, c in rendered.containers() if c["name"] in BARP_CONTAINERS]


def port_numbers(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def config_of(
    rendered: Rendered, suffix: str = "barp-sidecar-config", key: str = "barp.yaml"
) -> dict[str, Any]:
    return yaml.safe_load(rendered.one("ConfigMap", suffix)["data"][key])


@pytest.mark.parametrize("name", ci_names())
def test_every_barp_container_uses_grpc_probes_on_its_health_port(
    render_ci: Render, name: str | None
) -> None:
    rendered = render_ci(name)
    containers = barp_containers(rendered)
    assert containers, "nothing rendered a barp container"
    sidecar = config_of(rendered)
    for where, container in containers:
        ports = port_numbers(container)
        health_port = ports["barp-health"] if container["name"] == "barp-sidecar" else ports["trainer-health"]
        if container["name"] == "barp-sidecar":
            assert health_port == sidecar["server"]["health_port"], where
        else:
            trainer = config_of(rendered, "-trainer-config", "trainer.yaml")
            assert health_port == trainer["server"]["health_port"], where
        for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container[probe_name]
            assert set(probe) & {"httpGet", "exec", "tcpSocket"} == set(), f"{where} {probe_name}"
            assert probe["grpc"] == {"port": health_port, "service": ""}, f"{where} {probe_name}"
        startup = container["startupProbe"]
        # Sized for model loading: ~6 s on 2 idle cores; leave a wide margin for busy nodes.
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, where


@pytest.mark.parametrize("name", ci_names())
def test_security_context_everywhere(render_ci: Render, name: str | None) -> None:
    rendered = render_ci(name)
    for where, spec in rendered.pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["automountServiceAccountToken"] is False, where
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            context = container["securityContext"]
            label = f"{where}/{container['name']}"
            assert context["runAsNonRoot"] is True, label
            assert context["runAsUser"] != 0, label
            assert context["readOnlyRootFilesystem"] is True, label
            assert context["allowPrivilegeEscalation"] is False, label
            assert context["privileged"] is False, label
            assert context["capabilities"] == {"drop": ["ALL"]}, label


@pytest.mark.parametrize("name", ci_names())
def test_checksum_annotation_is_the_digest_of_the_configmap(render_ci: Render, name: str | None) -> None:
    rendered = render_ci(name)
    data = rendered.one("ConfigMap", "barp-sidecar-config")["data"]
    payload = data["barp.yaml"].rstrip("\n") + "\n---\n" + data.get("catalog.yaml", "").rstrip("\n")
    expected = hashlib.sha256(payload.encode()).hexdigest()
    pods = [
        o["spec"]["template"]["metadata"]
        for o in rendered.of_kind("Deployment")
        if o["metadata"]["labels"]["app.kubernetes.io/component"] != "trainer"
    ]
    for metadata in pods:
        assert metadata["annotations"]["checksum/barp-config"] == expected
    trainer_data = rendered.one("ConfigMap", "trainer-config")["data"]["trainer.yaml"]
    trainer = rendered.trainer()["spec"]["template"]["metadata"]
    assert (
        trainer["annotations"]["checksum/trainer-config"]
        == hashlib.sha256(trainer_data.rstrip("\n").encode()).hexdigest()
    )


def pod_annotation(rendered: Rendered, deployment_suffix: str, key: str) -> str:
    return rendered.one("Deployment", deployment_suffix)["spec"]["template"]["metadata"]["annotations"][key]


def test_checksum_changes_exactly_when_the_config_changes(helm: Helm) -> None:
    sidecar_values = CHART / "ci" / "sidecar-values.yaml"
    base = helm.template([sidecar_values])
    setting = helm.template([sidecar_values], ["config.batching.max_wait_ms=3"])
    catalog = helm.template([sidecar_values], ["catalog.providers[0].max_concurrency=8"])
    unrelated = helm.template([sidecar_values], ["exampleApp.replicas=3"])
    trainer = helm.template([sidecar_values], ["trainer.config.logging.level=debug"])

    def app(rendered: Rendered) -> str:
        return pod_annotation(rendered, "-example-app", "checksum/barp-config")

    def learner(rendered: Rendered) -> str:
        return pod_annotation(rendered, "-trainer", "checksum/trainer-config")

    assert app(setting) != app(base)
    assert app(catalog) != app(base)
    assert app(unrelated) == app(base)
    assert app(trainer) == app(base) and learner(trainer) != learner(base)
    assert learner(setting) == learner(base)


def test_no_secret_is_rendered_and_api_keys_come_from_secret_refs(render_ci: Render) -> None:
    rendered = render_ci("sidecar")
    assert rendered.of_kind("Secret") == []
    values = yaml.safe_load((CHART / "ci" / "sidecar-values.yaml").read_text())
    catalog = yaml.safe_load(rendered.one("ConfigMap", "barp-sidecar-config")["data"]["catalog.yaml"])
    needed = {entry["api_key_env"] for entry in catalog["providers"] if entry.get("api_key_env")}
    assert needed, "the ci catalog names key variables"
    for where, container in barp_containers(rendered):
        if container["name"] != "barp-sidecar":
            continue
        env = {item["name"]: item for item in container["env"]}
        for name in needed:
            assert "value" not in env[name], f"{where}: {name} has an inline value"
            reference = env[name]["valueFrom"]["secretKeyRef"]
            expected = next(k for k in values["apiKeys"] if k["env"] == name)
            assert reference == {"name": expected["secretName"], "key": expected["secretKey"]}
    # Only names of variables, Secrets and keys reach ConfigMaps; nothing that looks like a credential.
    for config_map in rendered.of_kind("ConfigMap"):
        text = yaml.safe_dump(config_map["data"])
        for marker in ("secretKeyRef", "sk-", "api_key:", "apiKey", "BEGIN PRIVATE KEY"):
            assert marker not in text, f"{config_map['metadata']['name']} contains {marker!r}"


def test_schema_refuses_an_inline_api_key_in_the_catalog(helm: Helm) -> None:
    from tests.helm.chart_render import HelmFailed

    with pytest.raises(HelmFailed) as caught:
        helm.template(
            [CHART / "ci" / "sidecar-values.yaml"], set_strings=["catalog.providers[0].api_key=sk-123"]
        )
    assert "api_key" in caught.value.stderr and "not allowed" in caught.value.stderr
    assert "sk-123" not in caught.value.stderr


def test_trainer_is_one_recreated_replica_on_its_claim_reached_by_service_name(render_ci: Render) -> None:
    rendered = render_ci(None)
    deployment = rendered.one("Deployment", "-trainer")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    spec = deployment["spec"]["template"]["spec"]
    claim = rendered.one("PersistentVolumeClaim", "-trainer-data")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    container = spec["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    trainer_config = config_of(rendered, "-trainer-config", "trainer.yaml")
    assert mounts["data"] == trainer_config["storage"]["data_dir"]
    service = rendered.one("Service", "-trainer")
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    port = service_ports["grpc"]
    assert port["targetPort"] == "trainer-grpc"
    assert port_numbers(container)["trainer-grpc"] == trainer_config["server"]["port"]
    assert service_ports["metrics"]["targetPort"] == "trainer-metrics"
    assert port_numbers(container)["trainer-metrics"] == trainer_config["metrics"]["port"]
    assert trainer_config["metrics"]["host"] == "0.0.0.0"
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    target = config_of(rendered)["trainer"]["target"]
    assert target == f"{service['metadata']['name']}.{NAMESPACE}.svc:{port['port']}"
    # No sidecar mounts the trainer's claim: checkpoints travel over FetchPolicy.
    for _, pod in rendered.pod_specs():
        if pod is not spec:
            assert all("persistentVolumeClaim" not in v for v in pod.get("volumes", []))


def test_two_trainer_replicas_are_a_statefulset_with_a_volume_each_and_failover_on(render_ci: Render) -> None:
    rendered = render_ci("nats-failover")
    assert not rendered.of_kind("Deployment") or all(
        not d["metadata"]["name"].endswith("-trainer") for d in rendered.of_kind("Deployment")
    )
    assert not [
        c for c in rendered.of_kind("PersistentVolumeClaim") if c["metadata"]["name"].endswith("-data")
    ]
    trainers = rendered.one("StatefulSet", "-trainer")
    assert trainers["spec"]["replicas"] == 2
    assert trainers["spec"]["serviceName"] == rendered.one("Service", "-trainer")["metadata"]["name"]
    (template,) = trainers["spec"]["volumeClaimTemplates"]
    assert template["metadata"]["name"] == "data"
    assert template["spec"]["accessModes"] == ["ReadWriteOnce"]
    spec = trainers["spec"]["template"]["spec"]
    assert "data" not in {v["name"] for v in spec["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    trainer_config = config_of(rendered, "-trainer-config", "trainer.yaml")
    assert mounts["data"] == trainer_config["storage"]["data_dir"]
    assert trainer_config["failover"] == {"enabled": True, "lease_ttl_s": 6}
    assert trainer_config["events"]["backend"] == "nats"
    # The single-replica default keeps failover off.
    assert "failover" not in config_of(render_ci(None), "-trainer-config", "trainer.yaml")


def test_standalone_router_service_pdb_and_tls(render_ci: Render) -> None:
    rendered = render_ci("standalone")
    deployment = rendered.one("Deployment", "-router")
    assert deployment["spec"]["replicas"] == 3
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    service = rendered.one("Service", "-router")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["targetPort"] == "barp-grpc" and "barp-grpc" in port_numbers(container)
    assert ports["metrics"]["targetPort"] == "barp-metrics" and "barp-metrics" in port_numbers(container)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    pdb = rendered.one("PodDisruptionBudget", "-router")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["BARP__SERVER__HOST"] == "0.0.0.0"
    assert env["BARP__SERVER__TLS_CLIENT_CA_FILE"].endswith("/ca.crt")


def test_injected_sidecar_stays_on_loopback_without_tls(render_ci: Render) -> None:
    rendered = render_ci("sidecar")
    spec = rendered.one("Deployment", "-example-app")["spec"]["template"]["spec"]
    names = [c["name"] for c in spec["containers"]]
    assert names == ["app", "barp-sidecar"]
    sidecar = spec["containers"][1]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["BARP__SERVER__HOST"] == "127.0.0.1"
    assert not any(name.startswith("BARP__SERVER__TLS") for name in env)
    # The Router port is not declared (loopback only); health and metrics are.
    assert set(port_numbers(sidecar)) == {"barp-health", "barp-metrics"}
    assert all(v["name"].startswith("barp-") or v["name"] == "app-tmp" for v in spec["volumes"])


def test_native_sidecar_is_an_init_container_that_restarts(render_ci: Render) -> None:
    spec = render_ci("native-sidecar").one("Deployment", "-example-app")["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    assert init["name"] == "barp-sidecar" and init["restartPolicy"] == "Always"
    assert [c["name"] for c in spec["containers"]] == ["app"]


def test_gpu_values(render_ci: Render) -> None:
    rendered = render_ci("gpu")
    for deployment_suffix in ("-router", "-example-app"):
        spec = rendered.one("Deployment", deployment_suffix)["spec"]["template"]["spec"]
        sidecar = next(c for c in spec["containers"] if c["name"] == "barp-sidecar")
        assert sidecar["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert sidecar["image"].endswith(":0.1.0-cu128")
        assert {"name": "BARP__POLICY__DEVICE", "value": "cuda"} in sidecar["env"]
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    trainer = rendered.trainer()["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in trainer["containers"][0]["resources"].get("limits", {})


def test_monitors_select_what_they_scrape(render_ci: Render) -> None:
    """The CRDs are not in kubernetes-validate's schemas: check their structure and references here."""
    rendered = render_ci("servicemonitor")
    assert len(rendered.of_kind("ServiceMonitor")) == 2
    services = rendered.of_kind("Service")
    for component in ("router", "trainer"):
        monitor = rendered.one("ServiceMonitor", f"-{component}")
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(monitor["spec"]) == {"selector", "namespaceSelector", "endpoints"}
        selector = monitor["spec"]["selector"]["matchLabels"]
        # The selector picks exactly the component's Service.
        (service,) = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
        assert service["metadata"]["name"].endswith(f"-{component}")
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert endpoint["path"] == "/metrics" and endpoint["interval"] == "30s"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    pod_monitor = rendered.one("PodMonitor")
    assert set(pod_monitor["spec"]) == {"selector", "namespaceSelector", "podMetricsEndpoints"}
    (pod_endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    app = rendered.one("Deployment", "-example-app")["spec"]["template"]
    selector = pod_monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= app["metadata"]["labels"].items()
    sidecar = next(c for c in app["spec"]["containers"] if c["name"] == "barp-sidecar")
    assert pod_endpoint["port"] in port_numbers(sidecar)
    assert port_numbers(sidecar)[pod_endpoint["port"]] == config_of(rendered)["metrics"]["port"]


def test_network_policies_open_the_ports_the_processes_use(render_ci: Render) -> None:
    rendered = render_ci("networkpolicy")
    config = config_of(rendered)
    router = rendered.one("NetworkPolicy", "-router")
    labels = rendered.one("Deployment", "-router")["spec"]["template"]["metadata"]["labels"]
    assert router["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    rules = {rule["ports"][0]["port"]: rule for rule in router["spec"]["ingress"]}
    assert set(rules) == {
        config["server"]["port"],
        config["metrics"]["port"],
        config["server"]["health_port"],
    }
    assert rules[config["server"]["port"]]["from"] == [
        {"podSelector": {"matchLabels": {"barp-sidecar.dev/router-client": "true"}}}
    ]
    assert "from" not in rules[config["server"]["health_port"]]  # the kubelet probes from the node

    trainer = rendered.one("NetworkPolicy", "-trainer")
    trainer_config = config_of(rendered, "-trainer-config", "trainer.yaml")
    (clients, scrapers, probes) = trainer["spec"]["ingress"]
    assert clients["ports"][0]["port"] == trainer_config["server"]["port"]
    (peer,) = clients["from"]
    # Sidecars carry these labels wherever they run (router pods included).
    assert peer["podSelector"]["matchLabels"].items() <= labels.items()
    assert scrapers["ports"][0]["port"] == trainer_config["metrics"]["port"]
    assert scrapers["from"] == rules[config["metrics"]["port"]]["from"]
    assert probes["ports"][0]["port"] == trainer_config["server"]["health_port"]
    assert "from" not in probes


@pytest.mark.parametrize(
    ("set_values", "key"),
    [
        (["standalone.enabled=true", "standalone.tls.enabled=true"], "standalone.tls.secretName"),
        (["trainer.tls.enabled=true"], "trainer.tls.secretName"),
        (["trainer.tls.enabled=true", "trainer.tls.secretName=t"], "trainerClient.tls.enabled"),
        (["trainerClient.tls.enabled=true"], "trainerClient.tls.caSecretName"),
        (["admin.expose=true"], "admin.tokenSecret.name"),
        (["metrics.serviceMonitor.enabled=true", "trainer.enabled=false"], "metrics.serviceMonitor.enabled"),
        (["standalone.enabled=true", "standalone.replicas=1"], "standalone.pdb.minAvailable"),
        (["sidecar.enabled=false", "standalone.enabled=true"], "sidecar.enabled"),
        (["trainer.replicas=2"], "trainer.replicas"),  # the gRPC event backend has one trainer
        (["trainer.replicas=2", "nats.enabled=true", "nats.policiesFromNats=false"], "trainer.replicas"),
        (
            ["trainer.replicas=2", "nats.enabled=true", "trainer.persistence.existingClaim=c"],
            "trainer.persistence.existingClaim",
        ),
    ],
)
def test_inconsistent_values_fail_naming_the_value(helm: Helm, set_values: list[str], key: str) -> None:
    from tests.helm.chart_render import HelmFailed

    with pytest.raises(HelmFailed) as caught:
        helm.template(set_values=set_values)
    assert f"{key}:" in caught.value.stderr


def test_http_api_on_loopback_when_injected_and_behind_the_service_when_standalone(render_ci: Render) -> None:
    injected = config_of(render_ci("sidecar"))
    assert injected["http"] == {"enabled": True, "port": 8080}  # host: the loopback default
    rendered = render_ci("standalone")
    assert config_of(rendered)["http"]["enabled"] is True
    service_ports = {p["name"]: p for p in rendered.one("Service", "-router")["spec"]["ports"]}
    assert service_ports["http"]["targetPort"] == "barp-http" and service_ports["http"]["port"] == 8080
    (router,) = [c for _, c in barp_containers(rendered) if "barp-http" in port_numbers(c)]
    assert port_numbers(router)["barp-http"] == 8080
    # The probes stay gRPC health: the sidecar reports SERVING only once the HTTP port is bound too.
    assert "grpc" in router["readinessProbe"]
    off = render_ci(None)
    assert all("barp-http" not in port_numbers(c) for _, c in barp_containers(off))


def test_grafana_dashboard_configmap_ships_the_dashboard_using_documented_metrics(render_ci: Render) -> None:
    rendered = render_ci("servicemonitor")
    config_map = rendered.one("ConfigMap", "-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    dashboard = json.loads(config_map["data"]["barp-sidecar.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "barp-sidecar.json").read_text())
    documented = set(
        re.findall(r"^\| `([a-z_]+)` \|", (CHART.parents[1] / "docs" / "metrics.md").read_text(), re.M)
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for e in exprs
        for name in re.findall(r"\b(?:barp|process)_[a-z_]+", e)
    }
    assert used and used <= documented, sorted(used - documented)
    # Each TTFT / TPOT / fallback panel the issue asks for is there.
    assert {"barp_completion_time_to_first_token_seconds", "barp_provider_fallbacks_total"} <= used
    assert all(
        "ConfigMap" != o["kind"] or not o["metadata"]["name"].endswith("-dashboard")
        for o in render_ci(None).objects
    )

"""What the chart hands the processes is what they read: settings files, BARP__ env, ports, mounted paths."""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import sys
import typing
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from barp_sidecar.providers.catalog import parse_catalog
from barp_sidecar.settings import ENV_PREFIX, Settings, load_settings
from tests.helm.chart_render import Rendered, ci_names
from trainer.service.settings import load_trainer_settings

Render = Callable[[str | None], Rendered]


def sidecars(rendered: Rendered) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, container, pod spec) of every barp-sidecar container."""
    found = []
    for name, spec in rendered.pod_specs():
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            if container["name"] == "barp-sidecar":
                found.append((f"{name}/barp-sidecar", container, spec))
    return found


def setting_names() -> set[tuple[str, str]]:
    """Every (section, key) of the sidecar's settings, read from the dataclasses themselves."""
    sections = typing.get_type_hints(Settings)
    return {
        (s.name, f.name) for s in dataclasses.fields(Settings) for f in dataclasses.fields(sections[s.name])
    }


def mounted_file(
    container: dict[str, Any], spec: dict[str, Any], path: str, config_maps: dict[str, Any]
) -> bool:
    """True when ``path`` is a file the pod provides: a key of a mounted ConfigMap or Secret item."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    target = PurePosixPath(path)
    for mount in container["volumeMounts"]:
        mount_path = PurePosixPath(mount["mountPath"])
        if target.parent != mount_path:
            continue
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            return target.name in config_maps[volume["configMap"]["name"]]["data"]
        if "secret" in volume:
            return target.name in {item["path"] for item in volume["secret"]["items"]}
    return False


def writable_dir(
    container: dict[str, Any], spec: dict[str, Any], path: str, claims: tuple[str, ...] = ()
) -> bool:
    """``claims``: the names of a StatefulSet's volumeClaimTemplates (one volume per replica)."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    volumes.update({name: {"persistentVolumeClaim": {}} for name in claims})
    for mount in container["volumeMounts"]:
        if PurePosixPath(path).is_relative_to(mount["mountPath"]) and not mount.get("readOnly", False):
            volume = volumes[mount["name"]]
            return "emptyDir" in volume or "persistentVolumeClaim" in volume
    return False


def load_container_settings(
    container: dict[str, Any], config_maps: dict[str, Any], tmp_path: Path
) -> Settings:
    """Run the container's own settings path: its --config file as rendered, plus its BARP__ env."""
    command = container["command"]
    assert command[:2] == ["barp-sidecar", "serve"], shlex.join(command)
    config_path = PurePosixPath(command[command.index("--config") + 1])
    (config_map,) = [cm for cm in config_maps.values() if config_path.name in cm["data"]]
    local = tmp_path / config_path.name
    local.write_text(config_map["data"][config_path.name])
    env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith(ENV_PREFIX)}
    return load_settings(local, env)


@pytest.mark.parametrize("name", ci_names())
def test_sidecar_settings_load_and_match_the_pod(render_ci: Render, name: str | None, tmp_path: Path) -> None:
    rendered = render_ci(name)
    config_maps = {cm["metadata"]["name"]: cm for cm in rendered.of_kind("ConfigMap")}
    known = setting_names()
    for where, container, spec in sidecars(rendered):
        for item in container["env"]:
            if item["name"].startswith(ENV_PREFIX):
                section, key = item["name"][len(ENV_PREFIX) :].lower().split("__")
                assert (section, key) in known, f"{where}: {item['name']} names no setting"
        settings = load_container_settings(container, config_maps, tmp_path)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["barp-health"] == settings.server.health_port, where
        assert ports["barp-metrics"] == settings.metrics.port and settings.metrics.host == "0.0.0.0", where
        if "barp-grpc" in ports:  # standalone: reachable from the network
            assert ports["barp-grpc"] == settings.server.port and settings.server.host == "0.0.0.0", where
        else:  # injected: the application calls it on loopback
            assert settings.server.host == "127.0.0.1", where
        if "barp-http" in ports:  # standalone with config.http.enabled: the Service's HTTP port
            assert settings.http.enabled and settings.http.host == "0.0.0.0", where
            assert ports["barp-http"] == settings.http.port, where
        else:  # injected (or off): only the application in the pod can call it
            assert settings.http.host == "127.0.0.1", where
        if "barp-admin" in ports:
            assert ports["barp-admin"] == settings.admin.port and settings.admin.host == "0.0.0.0", where
            token = next(e for e in container["env"] if e["name"] == settings.admin.token_env)
            assert "secretKeyRef" in token["valueFrom"], where
        else:
            assert settings.admin.host == "127.0.0.1", where
        assert writable_dir(container, spec, settings.rewards.spool_dir), f"{where}: spool not writable"
        assert writable_dir(container, spec, "/tmp"), f"{where}: /tmp not writable"
        cache = settings.trainer.checkpoint_cache_dir
        assert writable_dir(container, spec, cache), f"{where}: policy cache not writable"
        for path in (
            settings.providers.catalog_file,
            settings.server.tls_cert_file,
            settings.server.tls_key_file,
            settings.server.tls_client_ca_file,
            settings.trainer.tls_ca_file,
            settings.trainer.tls_cert_file,
            settings.trainer.tls_key_file,
        ):
            if path is not None:
                assert mounted_file(container, spec, path, config_maps), f"{where}: {path} is not mounted"


def test_rendered_catalog_is_a_valid_catalog(render_ci: Render) -> None:
    rendered = render_ci("sidecar")
    text = rendered.one("ConfigMap", "barp-sidecar-config")["data"]["catalog.yaml"]
    catalog = parse_catalog(yaml.safe_load(text), "catalog.yaml")
    assert [entry.model for entry in catalog.entries][:1] == ["gpt-4-1106-preview"]


@pytest.mark.parametrize("name", ci_names())
def test_trainer_settings_load(render_ci: Render, name: str | None, tmp_path: Path) -> None:
    rendered = render_ci(name)
    config_map = rendered.one("ConfigMap", "-trainer-config")
    local = tmp_path / "trainer.yaml"
    local.write_text(config_map["data"]["trainer.yaml"])
    settings = load_trainer_settings(local, {})
    container = rendered.trainer()["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["trainer-grpc"] == settings.server.port and settings.server.host == "0.0.0.0"
    assert ports["trainer-health"] == settings.server.health_port
    assert ports["trainer-metrics"] == settings.metrics.port and settings.metrics.host == "0.0.0.0"
    assert container["command"][:2] == ["barp-trainer", "serve"]
    spec = rendered.trainer()["spec"]["template"]["spec"]
    config_maps = {cm["metadata"]["name"]: cm for cm in rendered.of_kind("ConfigMap")}
    config_path = container["command"][container["command"].index("--config") + 1]
    assert mounted_file(container, spec, config_path, config_maps)
    templates = rendered.trainer()["spec"].get("volumeClaimTemplates", [])
    claims = tuple(t["metadata"]["name"] for t in templates)
    assert writable_dir(container, spec, settings.storage.data_dir, claims)
    volumes = {v["name"]: v for v in spec["volumes"]} | {n: {"persistentVolumeClaim": {}} for n in claims}
    data_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == settings.storage.data_dir)
    assert "persistentVolumeClaim" in volumes[data_mount["name"]]
    if name == "standalone":  # that values file turns on mTLS for the trainer
        assert settings.server.tls_client_ca_file is not None
    for path in (
        settings.server.tls_cert_file,
        settings.server.tls_key_file,
        settings.server.tls_client_ca_file,
    ):
        if path is not None:
            assert mounted_file(container, spec, path, config_maps), f"trainer: {path} is not mounted"


def test_example_app_command_uses_real_route_flags(render_ci: Render) -> None:
    rendered = render_ci("sidecar")
    app = rendered.one("Deployment", "-example-app")["spec"]["template"]["spec"]["containers"][0]
    script = app["command"][-1]
    flags = set(re.findall(r"(--[a-z-]+)", script))
    assert "barp-sidecar route" in script and flags
    help_text = subprocess.run(
        [sys.executable, "-m", "barp_sidecar.cli", "route", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for flag in flags:
        assert flag in help_text, f"`barp-sidecar route` has no {flag}"
    config = yaml.safe_load(rendered.one("ConfigMap", "barp-sidecar-config")["data"]["barp.yaml"])
    assert f"--target 127.0.0.1:{config['server']['port']}" in script

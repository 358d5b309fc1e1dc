"""Deployment files: the systemd units, the Dockerfile and the Kubernetes manifest."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from schedulerd.config import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
UNITS = ("schedulerd.service", "schedulerd@.service")
SCHEDULERD = Path(sys.executable).parent / "schedulerd"
# systemd-analyze security rates exposure from 0 (locked down) to 10 (unprotected).
MAX_EXPOSURE = 2.0


def unit_directives(name: str) -> dict[str, list[str]]:
    """Map each directive of a unit file to its values, in order; systemd allows repeats."""
    directives: dict[str, list[str]] = {}
    for line in (ROOT / "systemd" / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        directives.setdefault(key, []).append(value)
    return directives


def installed_copy(tmp_path: Path, name: str) -> Path:
    """Copy a unit with ExecStart pointing at this checkout's schedulerd, which verify requires to exist."""
    text = (ROOT / "systemd" / name).read_text().replace("/usr/local/bin/schedulerd", str(SCHEDULERD))
    path = tmp_path / name
    path.write_text(text)
    return path


class TestSystemdUnits:
    @pytest.mark.parametrize("name", UNITS)
    def test_service_contract(self, name):
        directives = unit_directives(name)
        expected = {
            "Type": ["notify"],
            "NotifyAccess": ["main"],
            "WatchdogSec": ["30"],
            "Restart": ["on-failure"],
            "RestartPreventExitStatus": ["2"],
            "ExecReload": ["/bin/kill -HUP $MAINPID"],
            "User": ["schedulerd"],
        }
        for key, values in expected.items():
            assert directives.get(key) == values, key

    @pytest.mark.parametrize("name", UNITS)
    def test_hardening(self, name):
        directives = unit_directives(name)
        for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                    "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "LockPersonality",
                    "MemoryDenyWriteExecute", "RestrictSUIDSGID", "RestrictRealtime", "RestrictNamespaces"):
            assert directives.get(key) == ["yes"], key
        assert directives["ProtectSystem"] == ["strict"]
        assert directives["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
        assert directives["SystemCallFilter"][0] == "@system-service"
        assert directives["CapabilityBoundingSet"] == [""]

    def test_config_paths(self):
        assert unit_directives("schedulerd.service")["ExecStart"] == [
            "/usr/local/bin/schedulerd run --no-daemon --config /etc/schedulerd/schedulerd.toml"
        ]
        template = unit_directives("schedulerd@.service")
        assert template["ExecStart"] == ["/usr/local/bin/schedulerd run --no-daemon --config /etc/schedulerd/%i.toml"]
        assert template["EnvironmentFile"] == ["-/etc/schedulerd/%i.env"]

    @pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
    @pytest.mark.parametrize("name", [*UNITS, "schedulerd@main.service"])
    def test_systemd_analyze_verify(self, tmp_path, name):
        template = name.replace("@main", "@")
        path = installed_copy(tmp_path, template)
        if template != name:
            path = path.rename(tmp_path / name)
        result = subprocess.run(
            ["systemd-analyze", "verify", str(path)], check=False, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""

    @pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
    def test_systemd_analyze_security(self, tmp_path):
        path = installed_copy(tmp_path, "schedulerd.service")
        result = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(path)],
            check=False, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if "--offline" in result.stderr:
            pytest.skip("this systemd-analyze has no --offline (systemd < 252)")
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
        assert match is not None, result.stdout + result.stderr
        assert float(match.group(1)) <= MAX_EXPOSURE


class TestDockerfile:
    def instructions(self) -> list[tuple[str, str]]:
        text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
        parsed = []
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keyword, _, rest = line.partition(" ")
                parsed.append((keyword.upper(), rest.strip()))
        return parsed

    def test_base_user_entrypoint(self):
        instructions = self.instructions()
        assert instructions[0] == ("FROM", "python:3.12-slim")
        users = [rest for keyword, rest in instructions if keyword == "USER"]
        assert users == ["10001:10001"]
        entrypoint = [rest for keyword, rest in instructions if keyword == "ENTRYPOINT"]
        assert json.loads(entrypoint[0]) == ["schedulerd", "run"]

    def test_healthcheck_uses_python_and_exposed_port(self):
        instructions = self.instructions()
        healthcheck = next(rest for keyword, rest in instructions if keyword == "HEALTHCHECK")
        command = json.loads(healthcheck[healthcheck.index("CMD") + 3:])
        assert command[:2] == ["python", "-c"]
        assert "/healthz" in command[2]
        compile(command[2], "HEALTHCHECK", "exec")
        assert ("EXPOSE", "9464") in instructions
        environment = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
        assert "SCHEDULERD_HTTP_ADDRESS=0.0.0.0:9464" in environment

    @pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed")
    def test_hadolint(self):
        result = subprocess.run(
            ["hadolint", str(ROOT / "Dockerfile")], check=False, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout


def load_yaml_documents(path: Path) -> list[dict]:
    """Parse with PyYAML from this interpreter, else from the system python3; skip when neither has it."""
    try:
        import yaml
    except ImportError:
        system_python = shutil.which("python3")
        if system_python is None:
            pytest.skip("no YAML parser: PyYAML is not installed")
        script = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))"
        result = subprocess.run(
            [system_python, "-c", script, str(path)], check=False, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            pytest.skip("no YAML parser: PyYAML is not installed")
        return list(json.loads(result.stdout))
    return list(yaml.safe_load_all(path.read_text()))


@pytest.fixture(scope="module")
def pod_spec() -> dict:
    documents = load_yaml_documents(ROOT / "deploy" / "kubernetes" / "sidecar.yaml")
    assert [document["kind"] for document in documents] == ["Deployment"]
    return documents[0]["spec"]["template"]["spec"]


class TestKubernetesSidecar:
    def container(self, pod_spec: dict, name: str) -> dict:
        return next(container for container in pod_spec["containers"] if container["name"] == name)

    def test_app_and_sidecar_containers(self, pod_spec):
        assert [container["name"] for container in pod_spec["containers"]] == ["worker", "schedulerd"]

    def test_probes(self, pod_spec):
        schedulerd = self.container(pod_spec, "schedulerd")
        assert schedulerd["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert schedulerd["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert schedulerd["ports"][0]["containerPort"] == 9464

    def test_environment_names_real_settings(self, pod_spec):
        known = {setting.env_var for setting in SETTINGS} | {"SCHEDULERD_CONFIG"}
        schedulerd = self.container(pod_spec, "schedulerd")
        names = [variable["name"] for variable in schedulerd["env"] if variable["name"].startswith("SCHEDULERD_")]
        assert set(names) <= known
        assert {"SCHEDULERD_REDIS_URL", "SCHEDULERD_QUEUES", "SCHEDULERD_HTTP_ADDRESS"} <= set(names)

    def test_password_from_secret(self, pod_spec):
        variables = self.container(pod_spec, "schedulerd")["env"]
        names = [variable["name"] for variable in variables]
        url = next(variable["value"] for variable in variables if variable["name"] == "SCHEDULERD_REDIS_URL")
        referenced = re.findall(r"\$\((\w+)\)", url)
        assert referenced == ["REDIS_PASSWORD"]
        # Kubernetes expands $(NAME) only from variables defined earlier in the list.
        assert names.index("REDIS_PASSWORD") < names.index("SCHEDULERD_REDIS_URL")
        password = variables[names.index("REDIS_PASSWORD")]
        assert set(password["valueFrom"]["secretKeyRef"]) == {"name", "key"}

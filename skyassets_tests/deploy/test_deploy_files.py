"""The deployment files under deploy/: they parse, and everything they name exists in this installation."""

import importlib
import importlib.util
import re
import shlex
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
YAML_FILES = ["dagster.yaml", "workspace.yaml", "docker-compose.yml", "helm/values.yaml"]
INSTANCE_ENV = {
    "SKYASSETS_POSTGRES_URL": "postgresql+psycopg2://skyassets:secret@postgres:5432/skyassets",
    "SKYASSETS_COMPUTE_LOGS_BUCKET": "skyassets-logs",
    "SKYASSETS_COMPUTE_LOGS_ENDPOINT": "http://minio:9000",
    "AWS_ACCESS_KEY_ID": "key",
    "AWS_SECRET_ACCESS_KEY": "secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def command_of(argv: list[str]) -> tuple[click.Command, list[str]]:
    """The click command an installed console script runs for ``argv`` (subcommands followed), and the rest."""
    (script,) = entry_points(group="console_scripts", name=argv[0])
    command = importlib.import_module(script.module).cli
    rest = list(argv[1:])
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    return command, rest


def assert_options_exist(argv: list[str]) -> None:
    command, rest = command_of(argv)
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    unknown = [arg for arg in rest if arg.startswith("-") and arg not in known]
    assert not unknown, f"{shlex.join(argv)}: {unknown} are not options of {command.name}"


def module_argument(argv: list[str]) -> str:
    for flag in ("-m", "--module-name"):
        if flag in argv:
            return argv[argv.index(flag) + 1]
    raise AssertionError(f"no module in {argv}")


@pytest.mark.parametrize("name", YAML_FILES)
def test_every_file_parses(name):
    assert isinstance(load(name), dict)


def resolve_env(value, env: dict[str, str]):
    """``value`` with every ``{env: NAME}`` replaced by ``env[NAME]``, as Dagster resolves them."""
    if isinstance(value, dict):
        if set(value) == {"env"}:
            return env[value["env"]]
        return {k: resolve_env(v, env) for k, v in value.items()}
    return value


def test_instance_settings_name_installed_classes_with_their_options():
    """What dagster.yaml names imports and takes the options set. Dagster itself loads the file
    (``DagsterInstance.from_config``) against a real PostgreSQL and S3 in skyassets_tests/e2e/test_postgres.py."""
    settings = load("dagster.yaml")
    assert set(settings) == {"storage", "compute_logs", "concurrency", "run_monitoring", "run_retries", "python_logs",
                             "telemetry"}
    # one machine's settings log the same way
    packaged = yaml.safe_load((ROOT / "skyassets" / "dagster.yaml").read_text())
    assert settings["python_logs"] == packaged["python_logs"] == {
        "managed_python_loggers": ["skyassets"], "python_log_level": "INFO"}
    # a dead run process is run again, a failed step left to the failure sensors, everywhere alike
    assert settings["run_retries"] == packaged["run_retries"] == {
        "enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False}
    helm = load("helm/values.yaml")["dagsterDaemon"]
    assert helm["runRetries"] == {"enabled": True, "maxRetries": 2, "retryOnAssetOrOpFailure": False}
    # and a pool slot a dead run process held is given back
    assert settings["run_monitoring"]["free_slots_after_run_end_seconds"] == 60
    assert packaged["run_monitoring"]["free_slots_after_run_end_seconds"] == 60
    assert helm["runMonitoring"]["freeSlotsAfterRunEndSeconds"] == 60
    (kind,) = settings["storage"]
    assert kind == "postgres"
    storage = importlib.import_module("dagster_postgres").DagsterPostgresStorage  # what `storage: postgres` loads
    assert set(settings["storage"]["postgres"]) <= set(storage.config_type())
    logs = settings["compute_logs"]
    manager_class = getattr(importlib.import_module(logs["module"]), logs["class"])
    assert set(logs["config"]) <= set(manager_class.config_type())
    manager = manager_class.from_config_value(None, resolve_env(logs["config"], INSTANCE_ENV))
    assert type(manager).__name__ == "S3ComputeLogManager"
    assert settings["concurrency"]["runs"]["max_concurrent_runs"] >= 1
    # Every variable the file reads is one the README and docker-compose.yml set.
    read = set(re.findall(r"env: (\w+)", (DEPLOY / "dagster.yaml").read_text()))
    assert read <= set(INSTANCE_ENV)
    assert read <= set(load("docker-compose.yml")["x-dagster"]["environment"])


def test_compose_services_run_existing_commands_on_the_code_location():
    compose = load("docker-compose.yml")
    services = compose["services"]
    assert {"postgres", "minio", "code", "daemon", "webserver", "webserver-viewers"} <= set(services)
    dagster_services = [name for name, s in services.items() if s.get("image") == compose["x-dagster"]["image"]]
    assert set(dagster_services) == {"code", "daemon", "webserver", "webserver-viewers"}
    for name in dagster_services:
        assert_options_exist(services[name]["command"])
    code = services["code"]["command"]
    assert importlib.util.find_spec(module_argument(code)) is not None
    assert code[:3] == ["dagster", "code-server", "start"]
    assert "--read-only" in services["webserver-viewers"]["command"]
    assert "--read-only" not in services["webserver"]["command"]

    # The webservers and the daemon reach the code server where the workspace says it is.
    workspace = load("workspace.yaml")["load_from"][0]["grpc_server"]
    assert workspace["host"] == "code"
    assert str(workspace["port"]) == code[code.index("-p") + 1]
    assert workspace["location_name"] == "skyassets"

    # Only the proxies are published, each in front of one webserver; no secret is written in the file.
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"oauth2-proxy-operators", "oauth2-proxy-viewers"}
    upstreams = {name: services[name]["environment"]["OAUTH2_PROXY_UPSTREAMS"] for name in published}
    assert upstreams == {
        "oauth2-proxy-operators": "http://webserver:3000",
        "oauth2-proxy-viewers": "http://webserver-viewers:3000",
    }
    text = (DEPLOY / "docker-compose.yml").read_text()
    secrets = ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "OAUTH2_PROXY_CLIENT_SECRET", "OAUTH2_PROXY_COOKIE_SECRET")
    for secret in secrets:
        values = re.findall(rf"{secret}: (.*)", text)
        assert values and all(value.startswith("${") for value in values), secret


def test_compose_image_builds_from_files_that_exist():
    build = load("docker-compose.yml")["services"]["code"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == ROOT
    dockerfile = (context / build["dockerfile"]).read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (context / source).exists(), line
    assert "deploy/dagster.yaml" in dockerfile
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {"!skyassets", "!deploy", "!setup.cfg"} <= set(ignore)


def test_helm_values_name_the_code_location_and_the_kubernetes_run_launcher():
    values = load("helm/values.yaml")
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    module = module_argument(deployment["dagsterApiGrpcArgs"])
    assert module == "skyassets.definitions" and importlib.util.find_spec(module) is not None
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["computeLogManager"]["type"] == "S3ComputeLogManager"
    assert values["dagsterWebserver"]["enableReadOnly"] is True
    assert values["postgresql"]["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    assert "postgresqlPassword" not in values["postgresql"]
    # skyassets' own log lines reach the runs' logs there as on one machine
    python_logs = load("dagster.yaml")["python_logs"]
    assert values["pythonLogs"] == {"managedPythonLoggers": python_logs["managed_python_loggers"],
                                    "pythonLogLevel": python_logs["python_log_level"]}
    # every pool the assets use is limited to one in the daemon pod, as dagster.yaml's default does
    pools = {m for path in (ROOT / "skyassets" / "defs").rglob("*.py")
             for m in re.findall(r'\bpool="(\w+)"', path.read_text())}
    comments = (ROOT / "deploy" / "helm" / "values.yaml").read_text()
    assert pools and all(f"dagster instance concurrency set {pool} 1" in comments for pool in pools), pools


def test_every_way_to_load_the_definitions_names_the_code_location_the_command_line_launches_for(tmp_path):
    """A run re-executes only in a location of the name that made it: the runs of `skyassets demo`
    and `ingest` must re-execute under `skyassets dev`, `dagster dev` in the project, and every
    deployment."""
    import tomllib

    from skyassets.cli.launch import LOCATION, MODULE, code_location_workspace

    (project,) = yaml.safe_load((ROOT / "workspace.yaml").read_text())["load_from"]
    assert project["python_module"] == {"module_name": MODULE, "location_name": LOCATION}
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]
    assert (settings["module_name"], settings["code_location_name"]) == (MODULE, LOCATION)
    assert [e["grpc_server"]["location_name"] for e in load("workspace.yaml")["load_from"]] == [LOCATION]
    (deployment,) = load("helm/values.yaml")["dagster-user-deployments"]["deployments"]
    assert deployment["name"] == LOCATION  # the chart names the location after its deployment
    (dev,) = yaml.safe_load(code_location_workspace(tmp_path, working_directory="/work").read_text())["load_from"]
    assert dev["python_module"] == {"module_name": MODULE, "location_name": LOCATION, "working_directory": "/work"}


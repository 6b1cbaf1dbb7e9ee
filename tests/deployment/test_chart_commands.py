"""Command lines and environment the templates give containers, checked by the parts' parsers."""

from __future__ import annotations

import argparse
import re
from typing import Any

import pytest
from nodemanager import manager as nodemanager_manager
from nodemanager import settings as nodemanager_settings

from gpushare import annotations as keys
from gpushare.cli import build_parser
from tests.deployment import chart
from timekeeper import settings as timekeeper_settings
from webhook import settings as webhook_settings

KUBERNETES_VARIABLE = re.compile(r"\$\(([A-Z_][A-Z0-9_]*)\)")


def gpushare_containers() -> list[chart.Container]:
    values = chart.load_values()
    found = [
        container
        for path in chart.template_files()
        for container in chart.containers(path, values)
        if container.argv[:1] == ["gpushare"]
    ]
    assert {c.argv[1] for c in found} == {
        "timekeeper",
        "db",
        "webhook",
        "nodemanager",
        "extender",
        "quotas",
    }
    return found


def subparser(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser:
    """The parser of `gpushare WORD…`; AssertionError when a word is no subcommand."""
    for word in words:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        assert actions, f"{parser.prog} has no subcommand {word!r}"
        assert word in actions[0].choices, f"{parser.prog}: unknown subcommand {word!r}"
        parser = actions[0].choices[word]
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """`gpushare …` through the real parser; a refusal fails the test with argparse's words."""
    parser = build_parser()

    def refuse(message: str) -> Any:
        raise AssertionError(f"gpushare {' '.join(argv)}: {message}")

    stack = [parser]
    while stack:
        current = stack.pop()
        current.error = refuse  # type: ignore[method-assign]
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
    return parser.parse_args(argv)


def conditional_flags(container: chart.Container) -> list[str]:
    """`--flag=` with an empty default: only rendered when set (`{{- if … }}`), so not passed."""
    return [arg for arg in container.args if re.fullmatch(r"--[a-z-]+=", arg)]


@pytest.mark.parametrize("container", gpushare_containers(), ids=lambda c: f"{c.template}:{c.name}")
def test_command_line_is_accepted_by_the_cli_parser(container: chart.Container) -> None:
    skipped = conditional_flags(container)
    argv = [arg for arg in container.argv[1:] if arg not in skipped]
    words = argv[:2] if argv[0] == "db" else argv[:1]
    command = subparser(build_parser(), words)
    options = {option for action in command._actions for option in action.option_strings}
    for flag in skipped:
        assert flag[:-1] in options, f"{container.name}: unknown flag {flag[:-1]}"
    parse(argv)


def test_node_manager_flags_pass_its_settings_parser() -> None:
    (container,) = [c for c in gpushare_containers() if c.argv[1] == "nodemanager"]
    skipped = conditional_flags(container)
    args = parse([arg for arg in container.argv[1:] if arg not in skipped])
    settings = nodemanager_settings.parse_settings(args)
    values = chart.load_values()["nodemanager"]
    host_dir = values["hostDir"]
    defaults = nodemanager_settings.Settings(node_name="")
    # The chart passes the node manager's own defaults: docs and flags tell one story.
    assert settings.hook_library_dir == defaults.hook_library_dir
    assert str(settings.hook_library_dir) == f"{host_dir}/lib"
    assert settings.state_dir == defaults.state_dir
    assert settings.checkpoint == defaults.checkpoint
    assert settings.device_plugin_dir == defaults.device_plugin_dir
    assert settings.pod_resources_socket == defaults.pod_resources_socket
    assert settings.log_format == "json"


def test_node_manager_sees_host_paths_at_the_same_paths() -> None:
    """It hands host paths to kubelet and writes there: inside and outside must agree."""
    values = chart.load_values()
    nodemanager = values["nodemanager"]
    path = chart.TEMPLATES / "nodemanager-daemonset.yaml"
    by_name = {c.name: c for c in chart.containers(path, values)}
    mounts = by_name["nodemanager"].mounts
    assert mounts["gpushare"] == nodemanager["hostDir"]
    assert mounts["device-plugins"] == nodemanager["devicePluginDir"]
    assert mounts["pod-resources"] == nodemanager["podResourcesDir"]
    text = path.read_text()
    for volume, key in (
        ("gpushare", "hostDir"),
        ("device-plugins", "devicePluginDir"),
        ("pod-resources", "podResourcesDir"),
    ):
        assert re.search(
            rf"- name: {volume}\n\s+hostPath:\n\s+path: \{{\{{ \$nm\.{key} \}}\}}", text
        ), f"volume {volume} is not the host path nodemanager.{key}"


def test_hook_library_is_installed_where_the_node_manager_mounts_it_from() -> None:
    values = chart.load_values()["nodemanager"]
    text = (chart.TEMPLATES / "nodemanager-daemonset.yaml").read_text()
    name = nodemanager_manager.HOOK_LIBRARY_NAME
    # install-hook: hostDir at /host, the library copied to /host/lib/<name>, then renamed.
    assert re.search(r"- name: gpushare\n\s+mountPath: /host\n", text)
    assert "cp {{ $nm.hookLibraryImagePath }} /host/lib/" in text
    assert f"mv /host/lib/.{name}.new /host/lib/{name}" in text
    assert "--hook-library-dir={{ $nm.hostDir }}/lib" in text
    assert values["hookLibraryImagePath"].rsplit("/", 1)[1] == name


def known_variables(part: str) -> set[str]:
    if part == "webhook":
        return {name for name, _, _ in webhook_settings.describe()}
    if part in ("timekeeper", "db"):
        return set(timekeeper_settings.ENV_NAMES.values())
    if part == "nodemanager":
        return {nodemanager_settings.TIMEKEEPER_URL_ENV}
    if part in ("extender", "quotas"):
        return set()
    raise AssertionError(f"no settings known for {part}")


@pytest.mark.parametrize("container", gpushare_containers(), ids=lambda c: f"{c.template}:{c.name}")
def test_gpushare_variables_are_read_by_the_part(container: chart.Container) -> None:
    ours = {name for name in container.env if name.startswith("GPUSHARE_")}
    assert sorted(ours - known_variables(container.argv[1])) == []
    for argument in container.argv:
        for name in KUBERNETES_VARIABLE.findall(argument):
            assert name in container.env, f"{argument} names {name}, not set in the container"


def test_webhook_environment_passes_its_settings_parser() -> None:
    (container,) = [c for c in gpushare_containers() if c.argv[1] == "webhook"]
    environ = {name: value for name, value in container.env.items() if value != chart.UNRESOLVED}
    # Built by helpers, not rendered here: the timekeeper URL's default shape.
    environ["GPUSHARE_WEBHOOK_TIMEKEEPER_URL"] = (
        "http://gpushare-timekeeper.gpushare-system.svc:8080"
    )
    settings = webhook_settings.Settings.from_env(environ)
    values = chart.load_values()
    assert settings.sidecar_token_expiration_seconds == values["sidecar"]["tokenExpirationSeconds"]
    assert settings.scheduler_name == values["webhook"]["schedulerName"]
    assert settings.scheduler_name == values["scheduler"]["name"]
    every = {name for name, _, _ in webhook_settings.describe()}
    assert sorted(every - set(container.env)) == [], "webhook settings the chart does not set"


def test_webhook_token_for_the_timekeeper_is_mounted_with_its_audience() -> None:
    (container,) = [c for c in gpushare_containers() if c.argv[1] == "webhook"]
    token_file = container.env["GPUSHARE_WEBHOOK_TIMEKEEPER_TOKEN_FILE"]
    directory, _, filename = token_file.rpartition("/")
    assert container.mounts["timekeeper-token"] == directory
    text = (chart.TEMPLATES / "webhook.yaml").read_text()
    assert (
        f"- serviceAccountToken: {{audience: {keys.TIMEKEEPER_AUDIENCE}, "
        f"expirationSeconds: 3600, path: {filename}}}" in text
    )

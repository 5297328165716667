"""``kubectl ckpt``'s command line: help, output formats, kubectl's plugin completion."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from ckpt_operator.cli.plugin import app, completion

COMMANDS = ["list", "describe", "verify", "resume-target", "gc", "delete"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "--namespace" in result.output
    if command not in ("delete",):
        assert "--output" in result.output


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["res"], ["resume-target"]),
        (["list", "-o", ""], ["table", "json", "yaml"]),
        (["gc", "--pl"], ["--plan"]),
    ],
)
def test_kubectl_plugin_completion(
    words: list[str],
    expected: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("COMP_WORDS", "COMP_CWORD", "_KUBECTL_CKPT_COMPLETE"):
        monkeypatch.setenv(name, "")  # restored afterwards: main() sets them
    monkeypatch.setattr(sys, "argv", ["kubectl_complete-ckpt", "__complete", *words])
    completion.main()
    assert capsys.readouterr().out.splitlines() == [*expected, ":4"]

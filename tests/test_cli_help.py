"""Every command's --help shows an example; usage errors are one kdforge: error line."""

from __future__ import annotations

import pytest

from kdforge.cli import main
from kdforge.cli.base import COMMANDS


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_help_shows_an_example(name, capsys):
    with pytest.raises(SystemExit) as done:
        main([*name.split(), "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and "kdforge " + name in out.split("example:")[1]


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in {n.split()[0] for n in COMMANDS}:
        assert name in out


@pytest.mark.parametrize("argv", [["train", "--bogus"], ["nonsense"], ["bench"],
                                  ["evaluate"], ["train", "--lr-scale", "x"]])
def test_usage_errors_are_one_line_with_exit_code_2(argv, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdforge: error: ") and "--help" in err[0]

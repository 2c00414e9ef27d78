"""The chapters' commands as subcommands of ``python -m rcnn_steps``: each runs its
module's ``main`` with the arguments after its name (its own help, checks and output,
under the name ``python -m rcnn_steps <command>``), takes ``--debug`` before or after its
name, ``--help`` lists every command, the chapter modules are imported only when their
command runs, and the old ``python -m rcnn_steps.<module>`` forms still work."""

import importlib
import json
import re
import subprocess
import sys

import pytest

from rcnn_steps import cli
from rcnn_steps.cli.chapters import CHAPTER_COMMANDS

#: The commands the package's own modules answer (the rest are the chapters').
OWN_COMMANDS = ("evaluate", "train", "predict", "export")


def _chapter_module(name: str):
    return importlib.import_module(CHAPTER_COMMANDS[name][0])


def test_every_chapter_command_is_its_module_name_with_dashes():
    for name, (module, _) in CHAPTER_COMMANDS.items():
        last = module.rsplit(".", 1)[-1]
        expected = module.split(".")[-2] if last == "__main__" else last  # rcnn_steps.data
        assert name == expected.replace("_", "-"), (name, module)
    assert set(CHAPTER_COMMANDS) >= {"sliding-window", "selective-search", "rcnn", "fast-rcnn",
                                     "ablations", "ladder", "keypoint-debug"}  # fmt: skip


def test_help_lists_every_command_with_its_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    listed = shown[shown.index("commands:") :]
    words = " ".join(listed.split())  # argparse wraps a long name's help onto the next line
    for name, (_, summary) in CHAPTER_COMMANDS.items():
        assert f" {name} {' '.join(summary.split()[:3])}" in words, (name, listed)
    for name in OWN_COMMANDS:
        assert [line for line in listed.splitlines() if line.split()[:1] == [name]], name


@pytest.mark.parametrize("name", sorted(CHAPTER_COMMANDS))
def test_a_chapter_command_forwards_every_argument_after_its_name(name, monkeypatch):
    module = _chapter_module(name)
    received = []

    def recorded_main(argv, *, prog=None):
        received.append((argv, prog))
        return 7

    monkeypatch.setattr(module, "main", recorded_main)
    arguments = ["evaluate", "--preset", "ci", "-h", "--help", "--data", "128", "x=1"]
    assert cli.main([name, *arguments]) == 7  # its status, as it returned it
    assert cli.main([name]) == 7
    assert cli.main(["--debug", name, "run"]) == 7  # --debug before it: the chapter's to take
    prog = f"python -m rcnn_steps {name}"
    assert received == [(arguments, prog), ([], prog), (["run", "--debug"], prog)]


@pytest.mark.parametrize("name", sorted(CHAPTER_COMMANDS))
def test_a_chapter_command_shows_its_module_help_and_errors(name, capsys):
    module = _chapter_module(name)
    for argv in (["--help"], ["--no-such-option"]):
        with pytest.raises(SystemExit) as through_cli:
            cli.main([name, *argv])
        shown = capsys.readouterr()
        with pytest.raises(SystemExit) as directly:
            module.main(argv, prog=f"python -m rcnn_steps {name}")
        assert (through_cli.value.code, shown) == (directly.value.code, capsys.readouterr())
    assert through_cli.value.code == 2  # the unknown option: the module's parser refused it


def _help(argv: list[str], capsys) -> str:
    """What ``python -m rcnn_steps ARGV`` prints for a ``--help`` in ``argv`` (exit 0)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 0, argv
    return capsys.readouterr().out


def _subcommands(help_text: str) -> list[str]:
    """The subcommands a module's help lists (``{measure,plan,run}``), or none."""
    found = re.search(r"^  \{([\w,-]+)\}$", help_text, re.MULTILINE)
    return found.group(1).split(",") if found else []


@pytest.mark.parametrize("name", sorted(CHAPTER_COMMANDS))
def test_a_chapter_commands_help_and_errors_name_it_as_typed(name, capsys):
    """``python -m rcnn_steps ladder --help`` shows ``usage: python -m rcnn_steps ladder``,
    not the module's old name; so do its subcommands' help and its parser's errors."""
    prog = f"python -m rcnn_steps {name}"
    shown = _help([name, "--help"], capsys)
    assert shown.startswith(f"usage: {prog} "), shown
    for command in _subcommands(shown):
        assert _help([name, command, "--help"], capsys).startswith(f"usage: {prog} {command} ")
    with pytest.raises(SystemExit) as exit_:
        cli.main([name, *_subcommands(shown)[:1], "--no-such-option"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {prog}"), err
    last = err.splitlines()[-1]  # an unknown option, or a required one missing
    assert last.startswith(prog) and ": error: " in last, err
    assert "rcnn_steps." not in err  # no old name anywhere


@pytest.mark.parametrize("name", sorted(CHAPTER_COMMANDS))
def test_a_chapter_command_takes_debug_before_or_after_its_name(name, capsys):
    """``python -m rcnn_steps --debug ladder plan ...`` hands ``--debug`` to the ladder
    (after its arguments), which takes it, as after ``ladder`` or after ``plan``."""
    shown = _help([name, "--help"], capsys)
    assert "--debug" in shown
    assert _help(["--debug", name, "--help"], capsys) == shown
    assert _help([name, "--debug", "--help"], capsys) == shown
    for command in _subcommands(shown):
        sub_help = _help([name, command, "--help"], capsys)
        assert "--debug" in sub_help, (name, command)
        assert _help(["--debug", name, command, "--help"], capsys) == sub_help
        assert _help([name, "--debug", command, "--help"], capsys) == sub_help
        assert _help([name, command, "--debug", "--help"], capsys) == sub_help


def test_old_module_names_stay_in_their_own_help(capsys):
    """``python -m rcnn_steps.ladder`` (``main`` without ``prog``) keeps its old name."""
    for name in CHAPTER_COMMANDS:
        with pytest.raises(SystemExit):
            _chapter_module(name).main(["--help"])
        assert capsys.readouterr().out.startswith("usage: python -m rcnn_steps."), name


def test_a_chapter_commands_user_error_is_one_line_and_debug_raises_it(tmp_path, capsys):
    """A bad ``--root`` of the ladder: one line on stderr, exit status 2, before any work
    (no data set made, no timing read); with ``--debug``, before or after the command's
    name, the exception itself."""
    from rcnn_steps.utils import CommandError

    missing = str(tmp_path / "no-such-set")
    for command in ("plan", "run", "measure"):
        assert cli.main(["ladder", command, "--root", missing]) == 2
        shown = capsys.readouterr()
        assert shown.out == ""
        assert shown.err.splitlines() == [
            f"error: --root {missing} is not a folder; give a data set's folder "
            "(--debug shows the traceback)"
        ]
    for argv in (["--debug", "ladder", "plan", "--root", missing],
                 ["ladder", "plan", "--root", missing, "--debug"],
                 ["ladder", "--debug", "plan", "--root", missing]):  # fmt: skip
        with pytest.raises(CommandError, match="is not a folder"):
            cli.main(argv)
    assert not (tmp_path / "no-such-set").exists()


def test_a_results_file_of_a_chapter_command_records_a_command_that_runs_again(
    tmp_path, monkeypatch
):
    """Run as ``python -m rcnn_steps ladder run ...``, a results file records
    ``__main__.py ladder run ...``, which the chapters' appendices show as the command."""
    import rcnn_steps.__main__
    from rcnn_steps.utils import _module_command, read_results, write_results

    argv = [rcnn_steps.__main__.__file__, "ladder", "run", "--data", "256"]
    monkeypatch.setattr(sys, "argv", argv)
    write_results(tmp_path / "r.json", {})
    recorded = read_results(tmp_path / "r.json")["provenance"]["command"]
    assert _module_command(recorded) == "python -m rcnn_steps ladder run --data 256"


def test_ladder_plan_prints_the_same_as_the_ladder_module(capsys):
    from rcnn_steps.experiments import ladder

    assert cli.main(["ladder", "plan", "--data", "128"]) == 0
    through_cli = capsys.readouterr()
    assert ladder.main(["plan", "--data", "128"]) == 0
    assert through_cli == capsys.readouterr()
    assert "total to do" in through_cli.out


def test_no_chapter_module_is_imported_until_its_command_runs():
    """``python -m rcnn_steps --help`` (as ``train``, ``predict`` ... start) imports none
    of the chapters' modules; ``ladder --help`` imports the ladder's, when it runs."""
    modules = sorted({module for module, _ in CHAPTER_COMMANDS.values()})
    code = (
        "import json, sys\n"
        "from rcnn_steps.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps([m for m in {modules!r} if m in sys.modules]))\n"
    )

    def imported(*argv: str) -> list[str]:
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True,
                              text=True, check=True)  # fmt: skip
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert imported("--help") == []
    assert "rcnn_steps.experiments.ladder" in imported("ladder", "--help")


#: The old forms of the chapters' commands (the shims at the package's top, the data
#: package, keypoint_debug's own module and the form its results file records) and of the
#: library's (``cli.py`` was a module).
OLD_FORMS = ("rcnn_steps.sliding_window", "rcnn_steps.selective_search", "rcnn_steps.rcnn",
             "rcnn_steps.fast_rcnn", "rcnn_steps.ablations", "rcnn_steps.ladder",
             "rcnn_steps.experiments.keypoint_debug", "rcnn_steps.keypoint_debug",
             "rcnn_steps.data",
             "rcnn_steps.cli")  # fmt: skip


@pytest.mark.parametrize("module", OLD_FORMS)
def test_the_old_python_m_forms_still_work(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")

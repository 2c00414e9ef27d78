"""The chapters' commands as subcommands of ``python -m rcnn_steps``: each runs its
module's ``main`` with the arguments after its name (its own help, checks and output),
``--help`` lists every command, the chapter modules are imported only when their command
runs, and the old ``python -m rcnn_steps.<module>`` forms still work."""

import importlib
import json
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

    def recorded_main(argv):
        received.append(argv)
        return 7

    monkeypatch.setattr(module, "main", recorded_main)
    arguments = ["evaluate", "--preset", "ci", "-h", "--help", "--data", "128", "x=1"]
    assert cli.main([name, *arguments]) == 7  # its status, as it returned it
    assert cli.main([name]) == 7
    assert cli.main(["--debug", name, "run"]) == 7  # --debug before it: the chapter's to take
    assert received == [arguments, [], ["run", "--debug"]]


@pytest.mark.parametrize("name", sorted(CHAPTER_COMMANDS))
def test_a_chapter_command_shows_its_module_help_and_errors(name, capsys):
    module = _chapter_module(name)
    for argv in (["--help"], ["--no-such-option"]):
        with pytest.raises(SystemExit) as through_cli:
            cli.main([name, *argv])
        shown = capsys.readouterr()
        with pytest.raises(SystemExit) as directly:
            module.main(argv)
        assert (through_cli.value.code, shown) == (directly.value.code, capsys.readouterr())
    assert through_cli.value.code == 2  # the unknown option: the module's parser refused it


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

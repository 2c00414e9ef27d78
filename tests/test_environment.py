"""The project's set-up files agree with each other."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_environment_yml_pins_equal_requirements_txt():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert req, "requirements.txt pins nothing"
    assert _pins(pip_section) == req


def test_every_requirement_is_pinned_exactly():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        assert not line or "==" in line, f"unpinned requirement: {line}"


def test_torch_and_torchvision_are_the_pair_that_loads_torchvision_ops():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    assert (req["torch"], req["torchvision"]) == ("2.14.1", "0.29.1")
    import torch
    import torchvision

    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert torchvision.ops.nms(box, torch.ones(1), 0.5).tolist() == [0]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci and "make test" in readme


def _make_variables_and_recipe(target: str) -> tuple[dict[str, str], list[str]]:
    text = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^([A-Z_]+) :?= (.*)$", text, re.MULTILINE))
    recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert recipe, f"no {target} target in the Makefile"
    return variables, recipe.group(1).splitlines()


def test_make_test_checks_the_book_under_other_cpu_kernels():
    """The committed outputs are written with the defaults (`make book-update`); `make test`
    must execute the chapters under other kernels, or a chapter whose outputs hold only on
    its author's CPU passes CI (issue 22)."""
    variables, recipe = _make_variables_and_recipe("test")
    kernel_variables = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
    for name in ("NBVAL_KERNELS", "RERUN_KERNELS"):
        assert any(v in variables.get(name, "") for v in kernel_variables), name
    nbval = [line for line in recipe if "$(NBVAL)" in line]
    assert nbval and all("env $(NBVAL_KERNELS)" in line for line in nbval)
    rerun = [line for line in recipe if "run_book.py" in line]
    assert rerun and "env $(RERUN_KERNELS)" in rerun[0] and "--out build/book-rerun" in rerun[0]
    assert any(
        "RCNN_BOOK_RERUN=build/book-rerun" in line and "pytest tests" in line for line in recipe
    )
    assert variables["NBVAL_KERNELS"] != variables["RERUN_KERNELS"]  # two kernel sets, not one

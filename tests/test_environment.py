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

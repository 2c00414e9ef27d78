"""DetectorConfig read by section: every field in one section of SECTIONS, a config's
sections (None for a branch that is off), ``--set`` and overrides by dotted name stored
under the flat one (equal configs, equal run cache keys), and display() grouped."""

import collections
import dataclasses

import pytest

from rcnn_steps import cli
from rcnn_steps.detectors.config import SECTIONS, DetectorConfig, flat_name, flat_overrides
from rcnn_steps.experiments import runner
from rcnn_steps.experiments.grid import RunSpec
from rcnn_steps.utils import CommandError

#: The sections whose ``enabled`` field is the branch's switch, by that field.
SWITCHES = {"fpn": "fpn", "mask": "masks", "keypoint": "keypoints"}


def test_every_field_sits_in_exactly_one_section():
    placed = collections.Counter(f for fields in SECTIONS.values() for f in fields.values())
    assert max(placed.values()) == 1, [f for f, n in placed.items() if n > 1]
    stored = {f.name for f in dataclasses.fields(DetectorConfig)}
    assert set(placed) == stored - {"preset"}  # preset records a config's origin
    assert {"backbone", "rpn", "box", "fpn", "mask", "keypoint"} <= set(SECTIONS)
    for section, fields in SECTIONS.items():
        for short, flat in fields.items():
            assert flat_name(f"{section}.{short}") == flat
            if short == "enabled":  # a branch's switch
                assert flat == SWITCHES[section]
            elif short != "name":  # backbone.name is the field backbone
                assert flat == short or flat.endswith("_" + short), (section, short, flat)
    assert SECTIONS["rpn"]["anchor_sizes"] == "anchor_sizes"
    assert SECTIONS["fpn"]["anchor_sizes"] == "fpn_anchor_sizes"
    assert SECTIONS["mask"]["loss"] == "mask_loss"
    assert SECTIONS["box"]["batch_size_per_image"] == "roi_batch_size_per_image"


def test_section_of_a_mask_config_and_of_a_box_only_config():
    masks = DetectorConfig.cpu_mask()
    assert masks.section("mask")["loss"] == "sigmoid" and masks.section("mask")["enabled"]
    assert masks.section("keypoint")["counts"] == masks.keypoint_counts
    assert masks.section("fpn")["anchor_sizes"] == (8, 16, 32, 64, 128)
    assert masks.section("roi")["op"] == "roialign_avg"
    # read by section, written back by dotted names: the same config
    dotted = {f"{s}.{k}": v for s in SECTIONS for k, v in masks.section(s).items()}
    assert DetectorConfig.cpu_mask(**dotted) == masks

    boxes = DetectorConfig.cpu()
    assert boxes.section("mask") is None and boxes.section("keypoint") is None
    assert boxes.section("fpn") is None
    assert boxes.section("rpn")["anchor_sizes"] == (8, 16, 32, 64)
    assert boxes.section("box")["batch_size_per_image"] == boxes.roi_batch_size_per_image == 64
    assert boxes.section("backbone") == {
        "name": "tiny", "width": 32, "blocks": 1, "weights": None,
        "trainable_layers": None, "feature_stage": "c3",
    }  # fmt: skip
    with pytest.raises(ValueError, match="no section 'masks'; the sections: data, backbone"):
        boxes.section("masks")


def test_dotted_and_flat_overrides_give_equal_configs_and_cache_keys():
    dotted = cli.parse_overrides(
        ["mask.loss=softmax", "rpn.anchor_sizes=8,16", "box.batch_size_per_image=32",
         "keypoint.enabled=false", "fpn.enabled=true", "fpn.anchor_sizes=8,16,32,64,128"]
    )  # fmt: skip
    flat = cli.parse_overrides(
        ["mask_loss=softmax", "anchor_sizes=8,16", "roi_batch_size_per_image=32",
         "keypoints=false", "fpn=true", "fpn_anchor_sizes=8,16,32,64,128"]
    )  # fmt: skip
    assert dotted == flat and list(dotted) == list(flat)  # flat keys, in the order given
    assert RunSpec("a", 0, "ci_mask", dotted).key() == RunSpec("b", 0, "ci_mask", flat).key()
    config = runner.detector_config("ci_mask", dotted)
    assert config == runner.detector_config("ci_mask", flat)
    assert dataclasses.asdict(config) == dataclasses.asdict(DetectorConfig.ci_mask(**flat))
    assert config.mask_loss == "softmax" and config.roi_batch_size_per_image == 32

    # a library user's dict of dotted names, through every door overrides come in by
    by_section = {"mask.loss": "softmax", "mask.head_channels": 8}
    assert flat_overrides(by_section) == {"mask_loss": "softmax", "mask_head_channels": 8}
    for made in (
        runner.detector_config("cpu_mask", by_section),
        DetectorConfig.cpu_mask(**by_section),  # cpu_mask's own 64 channels give way
    ):
        assert made == DetectorConfig.cpu_mask(mask_loss="softmax", mask_head_channels=8)
    assert DetectorConfig.parse_override("mask.loss", "softmax") == "softmax"
    assert flat_name("mask_loss") == "mask_loss"


def test_set_refuses_an_unknown_dotted_name_and_a_field_named_twice(tmp_path, capsys):
    with pytest.raises(CommandError, match="no field 'mask.los'; mask's fields: enabled, head"):
        cli.parse_overrides(["mask.los=softmax"])
    with pytest.raises(CommandError, match="mask_loss is given twice .*'mask_loss=sigmoid'"):
        cli.parse_overrides(["mask.loss=softmax", "mask_loss=sigmoid"])
    with pytest.raises(CommandError, match="box_head is given twice"):
        cli.parse_overrides(["box.head=mlp", "box.head=c5"])
    with pytest.raises(CommandError, match="did you mean 'mask_loss'"):  # no section masks
        cli.parse_overrides(["masks.loss=softmax"])
    with pytest.raises(ValueError, match="mask_loss is given twice"):
        runner.detector_config("ci", {"mask.loss": "softmax", "mask_loss": "sigmoid"})
    with pytest.raises(ValueError, match="no section 'head'"):
        flat_name("head.loss")

    out = tmp_path / "r.json"
    argv = ["evaluate", "--preset", "ci", "--out", str(out), "--set", "keypoint.weight=2"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --set keypoint.weight=2: "), err
    assert "keypoint's fields: enabled, counts, roi_op" in err[0] and not out.exists()


def test_display_groups_the_fields_by_section(capsys):
    DetectorConfig.ci_mask(fpn=True).display()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "DetectorConfig (preset 'ci_mask')"
    headers = [i for i, line in enumerate(lines) if line.startswith("  ") and line[2] != " "]
    assert [lines[i].strip() for i in headers] == [f"{s}:" for s in SECTIONS]
    for i, (section, fields) in zip(headers, SECTIONS.items(), strict=True):
        names = [line.split()[0] for line in lines[i + 1 : i + 1 + len(fields)]]
        assert names == list(fields.values()), section
    assert "    (mask resolution M)" in "\n".join(lines)

    DetectorConfig.cpu().display()
    printed = capsys.readouterr().out
    assert "  mask: off (masks=False)\n" in printed and "  fpn: off (fpn=False)\n" in printed
    assert "mask_loss" not in printed and "keypoint_counts" not in printed
    assert "  box:\n    pooled_size" in printed


def test_a_grid_run_and_a_scaled_setting_read_dotted_names_as_their_flat_fields():
    from rcnn_steps.experiments.datasets import scaled_overrides
    from rcnn_steps.experiments.grid import RunSpec

    flat = RunSpec("a", 0, "ci_mask", {"mask_loss": "softmax", "fpn_anchor_sizes": (8, 16)})
    dotted = RunSpec("a", 0, "ci_mask", {"mask.loss": "softmax", "fpn.anchor_sizes": (8, 16)})
    assert flat.key() == dotted.key()  # the same run: found in the cache, not trained twice
    doubled = scaled_overrides({"mask.loss": "softmax"}, 2)
    assert doubled["mask_loss"] == "softmax" and "mask.loss" not in doubled
    assert scaled_overrides({"mask.loss": "softmax"}, 1) == {"mask_loss": "softmax"}

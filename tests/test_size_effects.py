"""The size prediction's measurement: effects over the paper's against object size in cells."""

import pytest
import torch

from rcnn_steps import viz
from rcnn_steps.experiments import ablations
from rcnn_steps.experiments.datasets import scaled_overrides
from rcnn_steps.experiments.runner import detector_config
from rcnn_steps.experiments.size_effects import SIZE_EFFECTS, median_cells, size_effect_points
from rcnn_steps.modeling.poolers import LevelMapper, roi_size_in_cells


def _configs(scale):
    c4 = ablations.mask_rcnn_grid("mrcnn_2a")["c4"]["overrides"]
    return {
        "fpn": detector_config("cpu_mask", scaled_overrides({}, scale)),
        "c4": detector_config("cpu_mask", scaled_overrides(c4, scale)),
    }


BOXES = torch.tensor([[0.0, 0, 8, 8], [10, 10, 30, 26], [40, 40, 100, 90], [5, 60, 21, 92]])


def test_median_cells_on_each_map_and_the_scale_doubles_them():
    small, large = _configs(1), _configs(2)
    fpn = small["fpn"]
    mapper = LevelMapper(2, 5, fpn.roi_canonical_size, fpn.roi_canonical_level)
    assert median_cells(BOXES, fpn, "fpn") == pytest.approx(
        float(roi_size_in_cells(BOXES, mapper)[0].median())
    )
    sides = ((BOXES[:, 2:] - BOXES[:, :2]).prod(1)).sqrt() / 16  # C4: one stride-16 map
    assert median_cells(BOXES, small["c4"], "c4") == pytest.approx(float(sides.median()))
    # the same objects at twice the resolution, s0 doubled: the same levels, twice the cells
    for where in ("fpn", "c4"):
        doubled = median_cells(2 * BOXES, large[where], where)
        assert doubled == pytest.approx(2 * median_cells(BOXES, small[where], where))
    with pytest.raises(ValueError, match="'fpn' or 'c4'"):
        median_cells(BOXES, fpn, "p3")


def _grid(table, values):
    """A grid results dict as read_grid_results gives it: ``values`` {setting: [mask AP
    per seed]}."""
    settings = ablations.mask_rcnn_grid(table)
    runs = {
        f"{name}/seed{seed}": {"name": name, "seed": seed, "segm_metrics": {"AP": ap}}
        for name, aps in values.items()
        for seed, ap in enumerate(aps)
    }
    return {
        "table": table,
        "order": list(settings),
        "labels": {n: s["label"] for n, s in settings.items()},
        "settings": settings,
        "family": "mask_",
        "metric": "AP",
        "runs": runs,
        "summary": {n: {"n": len(values.get(n, []))} for n in settings},
    }


def test_points_divide_our_effect_by_the_papers_at_each_scale():
    scales = {
        "128": {"grids": {"mrcnn_2c": _grid("mrcnn_2c", {"roipool": [0.30, 0.32, 0.31],
                                                         "roialign_avg": [0.42, 0.43, 0.44]}),
                          "mrcnn_2a": _grid("mrcnn_2a", {"c4": [0.2], "fpn": [0.45]})},
                "boxes": BOXES, "configs": _configs(1)},
        "256": {"grids": {"mrcnn_2c": _grid("mrcnn_2c", {"roipool": [0.50],
                                                         "roialign_avg": [0.55]}),
                          "mrcnn_2a": _grid("mrcnn_2a", {"fpn": [0.6]})},  # c4 not run
                "boxes": 2 * BOXES, "configs": _configs(2)},
    }  # fmt: skip
    coco = {
        "boxes": 6.25 * BOXES,
        "configs": {
            "fpn": detector_config("cpu_mask", {"roi_canonical_size": 224}),
            "c4": _configs(1)["c4"],
        },
    }
    points = size_effect_points(scales, reference=coco)
    got = {(p["effect"], p["scale"]): p for p in points}
    assert set(got) == {("RoIAlign over RoIPool", "128"), ("RoIAlign over RoIPool", "256"),
                        ("FPN over C4", "128")}  # fmt: skip
    align = got["RoIAlign over RoIPool", "128"]
    paper = ablations.mask_rcnn_grid("mrcnn_2c")
    paper_effect = paper["roialign_avg"]["paper"]["AP"] - paper["roipool"]["paper"]["AP"]
    assert align["paper"] == pytest.approx(paper_effect)
    assert align["ours"] == pytest.approx(12.0) and align["seeds"] == [0, 1, 2]
    assert (align["ours_min"], align["ours_max"]) == pytest.approx((11.0, 13.0))
    assert align["ratio"] == pytest.approx(12.0 / paper_effect)
    big = got["RoIAlign over RoIPool", "256"]
    assert big["cells"] == pytest.approx(2 * align["cells"]) and big["ours"] == pytest.approx(5)
    assert got["FPN over C4", "128"]["cells"] == median_cells(BOXES, _configs(1)["c4"], "c4")
    assert [e[0] for e in SIZE_EFFECTS] == ["mrcnn_2c", "mrcnn_2b", "mrcnn_2a"]
    # the paper's case: the same objects at 800 px, s0 224, on the same map
    assert align["reference_cells"] == median_cells(6.25 * BOXES, coco["configs"]["fpn"], "fpn")
    c4_ref = got["FPN over C4", "128"]["reference_cells"]
    assert c4_ref == pytest.approx(6.25 * got["FPN over C4", "128"]["cells"])

    ax = viz.size_effects(points, title="t")
    lines = [line for line in ax.lines if line.get_label() in {"RoIAlign over RoIPool",
                                                                "FPN over C4"}]  # fmt: skip
    assert len(lines) == 2
    align_line = next(line for line in lines if line.get_label() == "RoIAlign over RoIPool")
    assert list(align_line.get_xdata()) == pytest.approx([align["cells"], big["cells"]])
    assert ax.get_xscale() == ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.texts]
    assert "128 px, n=3" in labels and "256 px, n=1" in labels
    hollow = [line for line in ax.lines if line.get_markerfacecolor() == "none"]
    assert sorted(line.get_xdata()[0] for line in hollow) == pytest.approx(
        sorted([align["reference_cells"], c4_ref])
    )  # one reference point per effect drawn, at ratio 1
    assert all(line.get_ydata()[0] == 1 for line in hollow)

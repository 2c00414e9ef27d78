import json

import pytest

from rcnn_steps.experiments import evolution


def test_rows_are_added_replaced_and_sorted(tmp_path):
    path = tmp_path / "evolution.json"
    evolution.add_row("02", "R-CNN", {"AP": 0.2, "AP50": 0.4}, 3.0, path=path)
    evolution.add_row("01", "sliding window", {"AP": 0.1, "AP50": 0.3}, 1.5, path=path)
    evolution.add_row("02", "R-CNN", {"AP": 0.25, "AP50": 0.45}, 2.5, path=path)
    rows = evolution.read_table(path)
    assert [r["detector"] for r in rows] == ["sliding window", "R-CNN"]
    assert rows[1]["metrics"]["AP"] == 0.25 and rows[1]["seconds_per_image"] == 2.5
    assert "commit" in rows[1]["provenance"] and "cpu" in rows[1]["provenance"]["machine"]
    json.loads(path.read_text())  # valid JSON on disk


def test_missing_metrics_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="must hold 'AP50'"):
        evolution.add_row("01", "x", {"AP": 0.1}, 1.0, path=tmp_path / "e.json")
    with pytest.raises(FileNotFoundError, match="written by the chapters"):
        evolution.read_table(tmp_path / "none.json")


def test_benchmark_devices_and_load_average():
    import torch

    from rcnn_steps.utils import benchmark_devices, load_average

    assert benchmark_devices("cpu") == [torch.device("cpu")]
    assert torch.device("cpu") in benchmark_devices("all")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            benchmark_devices("cuda")
    with pytest.raises(ValueError, match="cpu, cuda or all"):
        benchmark_devices("tpu")
    assert "cores" in load_average() or load_average() == "n/a"

"""The evaluation script's arithmetic, and its behaviour without the data."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.detection.evaluate import main, rate, wilson


def test_wilson_interval() -> None:
    low, high = wilson(0, 22)
    assert low == pytest.approx(0.0, abs=1e-9) and high == pytest.approx(0.1487, abs=1e-3)
    low, high = wilson(29, 36)
    assert low == pytest.approx(0.650, abs=1e-3) and high == pytest.approx(0.902, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)
    assert rate(1, 4) == "1/4 = 25% (5%-70%)"


def test_skips_with_a_clear_message_without_the_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.md"
    assert main(["--data", str(tmp_path), "--out", str(out)]) == 0
    assert "skipped: the corpora are not in" in capsys.readouterr().err
    assert not out.exists()

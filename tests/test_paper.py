"""The paper is built from experiments/results only: its numbers match the results files."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("paper_build", ROOT / "paper" / "build.py")
paper_build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paper_build)


def test_paper_numbers_come_from_the_results_files(tmp_path):
    out = paper_build.build(tmp_path / "paper.md")
    text = out.read_text()
    assert "{{" not in text
    bandit = json.loads((ROOT / "experiments/results/bandit_kkt.json").read_text())
    assert f"λ* = {bandit['lambda_star']:.6g}" in text
    for rule in ("gradient", "pid"):
        assert f"| {rule} | {bandit['lambda_final'][rule]:.6g} |" in text
    bench = json.loads((ROOT / "experiments/results/bench.json").read_text())
    assert f"{bench['ratios']['primal_dual_time_vs_dpo']:.3g}x a DPO step" in text
    assert (ROOT / "paper" / "paper.md").read_text() == text, "run `make paper`: stale paper.md"


def test_an_unfilled_placeholder_is_an_error():
    with pytest.raises(KeyError, match="no_such_number"):
        paper_build.render("x = {{no_such_number}}", {})

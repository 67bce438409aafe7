"""Small pieces that no end-to-end test names on their own: what the commands share
(`pdalign.cli.common`), the run manifest (`pdalign.training.manifest`), the report's CSV
(`pdalign.reporting.render`), the pair kind's batch order (`pdalign.contract.pair`) and the
plugin API's face (`pdalign.contract`)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pytest

from pdalign.cli.common import UsageError, locate, parse_prompt_overrides, step_of, usage_error
from pdalign.contract.opener import OpenerConstraint
from pdalign.contract.pair import PairConstraint, SeededBatches
from pdalign.reporting.render import write_csv
from pdalign.training.manifest import run_files, sha256_file, write_manifest
from tests.conftest import FIXTURES, compose, tiny_overrides


def test_usage_error_is_one_line_on_stderr_and_exit_status_2(capsys):
    assert usage_error("pdalign-x", UsageError("--out y: already exists")) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "pdalign-x: error: --out y: already exists\n"


def test_locate_names_the_flag_and_the_fix(tmp_path):
    with pytest.raises(UsageError, match=r"^give --run-dir RUN \(its newest checkpoint\) or "
                                         r"--checkpoint PATH$"):
        locate(None, None, None)
    with pytest.raises(UsageError, match=r"^--run-dir .*nope: no such directory$"):
        locate(str(tmp_path / "nope"), None, None)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"no complete step-N checkpoint"):
        locate(str(tmp_path / "run"), None, None)
    assert step_of(tmp_path / "run" / "checkpoints" / "step-12" / "model") == 12
    assert step_of(tmp_path / "run") is None


def test_prompt_overrides_parse_and_unknown_constraints_are_named(tmp_path):
    prompts = tmp_path / "red.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    got = parse_prompt_overrides([f"refusal:redteam={prompts}"], ["refusal", "kl_budget"])
    assert got == {"refusal": {"redteam": str(prompts)}}
    with pytest.raises(UsageError, match=r"--prompts 'toxicity:id=x': no constraint 'toxicity'"):
        parse_prompt_overrides(["toxicity:id=x"], ["refusal"])
    with pytest.raises(UsageError, match=r"expected CONSTRAINT:SET=PATH"):
        parse_prompt_overrides(["refusal=x"], ["refusal"])


def test_manifest_hashes_every_file_a_run_reads(tmp_path):
    """run_files lists the training data and each constraint's training and held-out prompt
    sets; write_manifest stores their sha256 (checked against hashlib) and leaves no temp file."""
    from hydra.utils import instantiate

    cfg = compose(tiny_overrides("method=primal_dual", "constraints=[refusal_openers]"))
    constraint = instantiate(cfg.constraints.refusal_openers)
    files = run_files(cfg, [constraint])
    names = {Path(f).name for f in files}
    assert {"pairs.jsonl", "adversarial.jsonl", "adversarial_heldout.jsonl",
            "adversarial_shifted.jsonl"} <= names
    path = write_manifest(tmp_path, {"seed": 0}, files, seed=0, dtype="float32", world_size=1)
    manifest = json.loads(path.read_text())
    pairs = str((FIXTURES / "pairs.jsonl").resolve())
    assert manifest["data_hashes"][pairs] == hashlib.sha256(
        (FIXTURES / "pairs.jsonl").read_bytes()).hexdigest() == sha256_file(pairs)
    assert manifest["seed"] == 0 and manifest["world_size"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_report_csv_takes_the_union_of_columns_and_writes_none_empty():
    buf = io.StringIO()
    write_csv([{"method": "dpo", "x": 0.1 + 0.2}, {"method": "pd", "y": None, "x": 1.0}], buf)
    rows = list(csv.reader(io.StringIO(buf.getvalue())))
    assert rows == [["method", "x", "y"], ["dpo", "0.3", ""], ["pd", "1", ""]]


def test_seeded_batches_cover_each_epoch_once_and_resume_exactly():
    batches = SeededBatches(7, 3, seed=5)
    first_epoch = batches.next() + batches.next()  # 6 of 7; the 7th waits for the next order
    assert len(set(first_epoch)) == 6 and set(first_epoch) <= set(range(7))
    state = batches.state_dict()
    ahead = [batches.next() for _ in range(4)]
    again = SeededBatches(7, 3, seed=99)  # another seed: the state decides
    again.load_state_dict(state)
    assert [again.next() for _ in range(4)] == ahead
    assert SeededBatches(7, 3, seed=5).next() == first_epoch[:3]


def test_the_plugin_face_hands_on_the_kinds_the_bundled_plugins_subclass():
    import pdalign.contract as face
    from pdalign.constraints.refusal import RefusalOpeners, RefusalPairs

    assert face.OpenerConstraint is OpenerConstraint and face.PairConstraint is PairConstraint
    assert issubclass(RefusalOpeners, OpenerConstraint) and issubclass(RefusalPairs, PairConstraint)
    assert set(face.__all__) <= set(dir(face))

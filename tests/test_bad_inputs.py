"""Bad inputs, tried the way a new user would: each gives ONE clear error naming the field and
the fix, before the model loads where it can, leaves nothing half-written, and exits non-zero
through the CLI. tests/README.md lists the messages verbatim."""

import errno
import json
import re

import pytest

import pdalign.training.build
import pdalign.training.checkpoint
from pdalign.training.trainer import train
from tests.conftest import FIXTURES, compose, pdalign_train, tiny_overrides

GOOD = {"prompt": "Describe a red apple.", "chosen": "It is red.", "rejected": "No."}
LONG_PROMPT = {**GOOD, "prompt": "Tell me about apples. " * 100}
LATIN1 = (json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "chosen": "Caf\u00e9 au lait."},
                                                ensure_ascii=False)).encode("latin-1")


def _range_error(key, value, must, meaning, default, verdict="is out of range"):
    """The message `pdalign.training.config.check_ranges` gives, as a regex."""
    return re.escape(f"{key}={value} {verdict}: it must be {must} ({meaning}). Set {key} to "
                     f"{must}, e.g. the default {key}={default}") + "$"


# id: (data, overrides; "{tmp}" is the test's tmp dir), exception, message. data: the lines of
# data.jsonl (which becomes data.train), {file name: bytes} written into {tmp} for the
# overrides to name, or None.
CASES = {
    "malformed_jsonl": (
        [json.dumps(GOOD), '{"prompt": "a", "chosen": "b", "rejected": '], [],
        ValueError, r"data\.jsonl, line 2: invalid JSON \(Expecting value at column \d+\)\. "
                    r"Fix: repair or delete this line, or set data\.skip_invalid=true$"),
    "wrong_column_names": (
        [json.dumps({"question": "a", "chosen": "b", "rejected": "c"})], [],
        ValueError, r"line 1, field 'prompt': column 'prompt' not found; the row has columns "
                    r"\['chosen', 'question', 'rejected'\]\. Fix: set data\.columns\.prompt="),
    "non_string_value": (
        [json.dumps({**GOOD, "chosen": 3})], [],
        ValueError, r"line 1, field 'chosen': expected a string or a message list, got int\. "
                    r"Fix: give a string, or a list of"),
    "empty_dataset": (
        ["", "  "], [],
        ValueError, r"data\.jsonl: contains no rows\. Fix: point data\.train at a non-empty"),
    "missing_data_file": (
        None, ["data.train={tmp}/nope.jsonl"],
        ValueError, r"nope\.jsonl: file not found\. Fix: check data\.train"),
    "prompt_longer_than_budget": (
        [json.dumps(LONG_PROMPT)], ["data.max_prompt_length=null", "data.max_length=64"],
        ValueError, r"line 1, field 'prompt': the prompt has \d+ tokens, leaving no room for a "
                    r"response in max_length=64\. Fix: set data\.max_prompt_length below "
                    r"data\.max_length"),
    "chosen_identical_to_rejected": (
        [json.dumps({**GOOD, "rejected": GOOD["chosen"]})], [],
        ValueError, r"line 1, field 'rejected': chosen is identical to rejected, so the pair "
                    r"carries no preference\. Fix: remove the row or set data\.skip_invalid"),
    "unknown_model_path": (
        None, ["model.name_or_path={tmp}/no-model"],
        FileNotFoundError, r"^model\.name_or_path='.*no-model' is neither a local directory nor "
                           r"a hub id \(owner/name\)\. Use model=smollm2_135m .*model=tiny"),
    "uncached_hub_model_offline": (
        None, ["model.name_or_path=nobody/no-model"],
        FileNotFoundError, r"^model\.name_or_path='nobody/no-model' could not be loaded .*"
                           r"Offline, only a local save_pretrained directory"),
    "unknown_constraint_target": (
        None, ["method=primal_dual", "+constraints.x._target_=pdalign.constraints.nope.Nope"],
        ValueError, r"^constraints\.x[:.].*pdalign\.constraints\.nope\.Nope"),
    "epsilon_out_of_range": (
        None, ["method=primal_dual", "constraints=[refusal]", "constraints.refusal.epsilon=1.5"],
        ValueError, r"constraints\.refusal\.epsilon=1\.5 is out of range: it must be in "
                    r"\[0, 1\] \(a rate\)$"),
    "epsilon_zero_kl": (
        None, ["method=primal_dual", "constraints=[kl_budget]",
               "constraints.kl_budget.epsilon=0"],
        ValueError, r"constraints\.kl_budget\.epsilon=0 is out of range: it must be in "
                    r"\(0, inf\)"),
    "negative_lambda_max": (
        None, ["method=primal_dual", "constraints=[kl_budget]", "dual.lambda_max=-1"],
        ValueError, r"^dual\.lambda_max must be finite and >= 0 for every constraint, got "
                    r"\[-1\.0\].*set a cap \(e\.g\. 10\)"),
    "infinite_lambda_max": (
        None, ["method=primal_dual", "constraints=[kl_budget]", "dual.lambda_max=inf"],
        ValueError, r"^dual\.lambda_max must be finite and >= 0 for every constraint, got "
                    r"\[inf\]"),
    "negative_constraint_lambda_max": (
        None, ["method=primal_dual", "constraints=[kl_budget]",
               "constraints.kl_budget.lambda_max=-1"],
        ValueError, r"constraints\.kl_budget\.lambda_max must be a finite number > 0 or null"),
    "non_positive_constraint_scale": (
        None, ["method=primal_dual", "constraints=[kl_budget]", "constraints.kl_budget.scale=0"],
        ValueError, r"^constraints\.kl_budget\.scale=0: the unit of the violation must be a "
                    r"finite number > 0 \(1 for a rate; about epsilon for tokens or nats\)$"),
    "unknown_length_estimator": (
        None, ["method=primal_dual", "constraints=[length]", "constraints.length.epsilon=2",
               "constraints.length.estimator=exact"],
        ValueError, r"^constraints\.length\.estimator='exact' is not an estimator: use one of "
                    r"sampled \(.*\); stop \(.*\)$"),
    "rollout_prompt_file_missing": (
        None, ["method=primal_dual", "constraints=[refusal]",
               "constraints.refusal.prompts={tmp}/redteam.jsonl"],
        ValueError, r"constraints\.refusal\.prompts='.*redteam\.jsonl': no such file \(tried "),
    "unknown_key_added_with_plus": (
        None, ["+train.stepz=3"],
        ValueError, r"^train\.stepz is not a known key of the train config group "
                    r"\(conf/train/\*\.yaml\)\. Did you mean train\.steps\?"),
    "negative_activation_checkpointing": (
        None, ["train.activation_checkpointing=-1"],
        ValueError, r"^train\.activation_checkpointing must be >= 0 \(0 = off, k = every k-th "
                    r"decoder layer\), got -1$"),
    "bad_dtype": (
        None, ["train.dtype=fp16"],
        ValueError, r"^train\.dtype='fp16' is not one of auto, fp32, bf16$"),
    "latin1_jsonl": (
        {"data.jsonl": LATIN1}, ["data.train={tmp}/data.jsonl"],
        ValueError, r"data\.jsonl: is not UTF-8 text: byte 0xe9 at byte offset 129 \(line 2\) "
                    r"cannot be decoded\. Fix: re-save it as UTF-8, e\.g\. iconv -f <its "
                    r"encoding> -t UTF-8 data\.jsonl > utf8\.jsonl, or your editor's"),
    "utf16_jsonl": (
        {"data.jsonl": json.dumps(GOOD).encode("utf-16")}, ["data.train={tmp}/data.jsonl"],
        ValueError, r"data\.jsonl: is not UTF-8 text: byte 0xff at byte offset 0 \(line 1\) "
                    r"cannot be decoded \(the file starts with a UTF-16 byte-order mark\)\. "
                    r"Fix: re-save it as UTF-8, e\.g\. iconv -f UTF-16 -t UTF-8"),
    "corrupt_parquet": (
        {"data.parquet": b"PAR1" + bytes(range(64))}, ["data.train={tmp}/data.parquet"],
        ValueError, r"data\.parquet: cannot be read as Parquet \(Parquet magic bytes not found "
                    r"in footer.*\)\. Fix: re-write the file \(e\.g\. "
                    r"datasets\.Dataset\.to_parquet"),
    "zero_lr": (
        None, ["train.lr=0"], ValueError,
        "^" + _range_error("train.lr", 0, "a finite number > 0",
                           "the optimizer's learning rate", 0.0005)),
    "negative_lr": (
        None, ["train.lr=-1"], ValueError,
        "^" + _range_error("train.lr", -1, "a finite number > 0",
                           "the optimizer's learning rate", 0.0005)),
    "nan_lr": (
        None, ["train.lr=nan"], ValueError,
        "^" + _range_error("train.lr", "nan", "a finite number > 0",
                           "the optimizer's learning rate", 0.0005, "is not valid")),
    "zero_batch_size": (
        None, ["train.batch_size=0"], ValueError,
        "^" + _range_error("train.batch_size", 0, "an integer >= 1",
                           "preference pairs per micro-batch", 4)),
    "zero_steps": (
        None, ["train.steps=0"], ValueError,
        "^" + _range_error("train.steps", 0, "an integer >= 1", "optimizer steps", 100)),
    "bool_steps": (
        None, ["train.steps=true"], ValueError,
        "^" + _range_error("train.steps", "true", "an integer >= 1", "optimizer steps", 100,
                           "is not valid")),
    "fractional_grad_accum": (
        None, ["train.grad_accum=0.5"], ValueError,
        "^" + _range_error("train.grad_accum", 0.5, "an integer >= 1",
                           "micro-batches per optimizer step", 1, "is not valid")),
    "unknown_schedule": (
        None, ["train.schedule=linear"], ValueError,
        "^" + _range_error("train.schedule", "linear", "one of constant, cosine",
                           "the learning-rate schedule after warm-up", "constant",
                           "is not valid")),
    "zero_rollout_top_p": (
        None, ["train.rollout.top_p=0"], ValueError,
        "^" + _range_error("train.rollout.top_p", 0, "a finite number in (0, 1]",
                           "nucleus mass; 1 = off", 1.0)),
    "zero_keep_last": (
        None, ["train.keep_last=0"], ValueError,
        "^" + _range_error("train.keep_last", 0, "an integer >= 1", "checkpoints kept on disk",
                           2)),
    "zero_max_prompt_length": (
        None, ["data.max_prompt_length=0"], ValueError,
        "^" + _range_error("data.max_prompt_length", 0, "an integer >= 1 or null",
                           "prompt tokens; null = no limit", 128)),
    "eval_confidence_one": (
        None, ["eval.confidence=1"], ValueError,
        "^" + _range_error("eval.confidence", 1, "a finite number in (0, 1)",
                           "one-sided level of the upper bounds", 0.95)),
}


def _overrides(tmp_path, data, extra):
    overrides = [o.replace("{tmp}", str(tmp_path)) for o in extra]
    if isinstance(data, dict):
        for name, content in data.items():
            (tmp_path / name).write_bytes(content)
    elif data is not None:
        (tmp_path / "data.jsonl").write_text("\n".join(data) + "\n")
        overrides.insert(0, f"data.train={tmp_path / 'data.jsonl'}")
    return tiny_overrides("train.steps=2", *overrides)


def _assert_nothing_written(run_dir):
    assert not run_dir.exists() or not any(run_dir.iterdir()), list(run_dir.iterdir())


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_once_clearly_before_the_model(tmp_path, no_model, case):
    data, extra, kind, pattern = CASES[case]
    cfg = compose(_overrides(tmp_path, data, extra))
    with pytest.raises(kind) as err:
        train(cfg, tmp_path / "run")
    first_line = str(err.value).splitlines()[0]  # what Hydra's one-line report leads with
    assert re.search(pattern, first_line), str(err.value)
    _assert_nothing_written(tmp_path / "run")


def test_qlora_without_working_4bit_names_peft_lora(tmp_path, no_model, monkeypatch):
    """Simulated: bitsandbytes 0.50 runs nf4 on this CPU, so break its 4-bit layer as a machine
    without kernels would."""
    import bitsandbytes as bnb

    def no_kernels(*args, **kwargs):
        raise RuntimeError("CUDA is required for 4-bit layers")

    monkeypatch.setattr(bnb.nn, "Linear4bit", no_kernels)
    with pytest.raises(RuntimeError, match=r"^peft=qlora needs bitsandbytes 4-bit layers, which "
                       r"fail on this machine \(.*CUDA is required.*\)\. Use peft=lora instead\.$"):
        train(compose(tiny_overrides("peft=qlora", "train.steps=2")), tmp_path / "run")
    _assert_nothing_written(tmp_path / "run")


def test_detoxify_checkpoint_missing_offline_names_profanity_check(tmp_path, no_model,
                                                                   monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose(tiny_overrides("method=primal_dual", "constraints=[toxicity]",
                                 "constraints.toxicity.scorer=detoxify"))  # asked for by name
    with pytest.raises(ValueError) as err:
        train(cfg, tmp_path / "run")
    message = str(err.value)
    assert re.match(r"constraints\.toxicity\.scorer=detoxify needs "
                    r"Detoxify's 'original' checkpoint at .*torch/hub/checkpoints/.*, which is "
                    r"not cached", message), message
    assert "constraints.toxicity.scorer=profanity_check" in message
    _assert_nothing_written(tmp_path / "run")


def test_unknown_key_on_the_command_line_is_refused_by_hydra():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=r"Could not override 'train\.stepz'"):
        compose(tiny_overrides("train.stepz=3"))


def test_bad_resume_path_names_train_resume(tmp_path, no_model):
    """Caught before the model loads (checkpoint.resume_path); see tests/README.md."""
    with pytest.raises(FileNotFoundError, match=r"^train\.resume=.*nope: no such directory\. Use "
                       r"train\.resume=auto"):
        train(compose(tiny_overrides("train.steps=2", f"train.resume={tmp_path / 'nope'}")),
              tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_utf8_with_a_byte_order_mark_is_read(tmp_path):
    """Excel and Notepad write UTF-8 with a BOM; it is UTF-8, so it is not a line-1 error."""
    from pdalign.data.preference import load_preference_rows

    (tmp_path / "data.jsonl").write_bytes(json.dumps(GOOD).encode("utf-8-sig"))
    rows, _ = load_preference_rows(tmp_path / "data.jsonl")
    assert [row.prompt for row in rows] == [GOOD["prompt"]]


def test_fewer_pairs_than_the_batch_size(tmp_path):
    (tmp_path / "data.jsonl").write_text(
        "".join(line for line in open(FIXTURES / "pairs.jsonl").readlines()[:3]))
    with pytest.raises(ValueError, match=r"train\.batch_size"):
        train(compose(tiny_overrides(f"data.train={tmp_path / 'data.jsonl'}",
                                     "train.batch_size=4", "train.steps=2")), tmp_path / "run")


def test_disk_full_while_checkpointing_leaves_only_complete_checkpoints(tmp_path, monkeypatch):
    saves = []
    real_save = pdalign.training.checkpoint.torch.save

    def filling_disk(obj, path, *args, **kwargs):
        if "/.step-2-" in str(path):  # the second checkpoint's temp dir
            saves.append(path)
            if len(saves) == 2:  # its second file: the first is on disk already
                open(path, "wb").write(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(pdalign.training.checkpoint.torch, "save", filling_disk)
    cfg = compose(tiny_overrides("train.steps=3", "train.checkpoint_every=1"))
    with pytest.raises(OSError) as err:
        train(cfg, tmp_path / "run")
    assert re.match(r"writing checkpoint step-2 in .*checkpoints failed \(\[Errno 28\] No space "
                    r"left on device\); nothing was left half-written\. Free disk space, lower "
                    r"train\.keep_last, or point the run dir elsewhere", str(err.value))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-1"]
    monkeypatch.setattr(pdalign.training.checkpoint.torch, "save", real_save)
    summary = train(compose(tiny_overrides("train.steps=3", "train.checkpoint_every=1",
                                           "train.resume=auto")), tmp_path / "run")
    assert summary["steps"] == 3  # and the run continues from step-1 once there is room


# ---- through the real CLI: exit code and the exception line on stderr ----------------------

CLI = {
    "malformed_jsonl": (["data.train={tmp}/data.jsonl"],
                        r"^pdalign\.data\.readers\.PreferenceDataError: .*data\.jsonl, line 2: invalid "
                        r"JSON \(.*\)\. Fix: repair or delete this line"),
    "unknown_key": (["train.stepz=3"],
                    r"^Could not override 'train\.stepz'\.$"),
    "unknown_constraint_name": (["method=primal_dual", "constraints=[nope]"],
                                r"^constraints=\[nope\]: unknown constraint 'nope' \(no "
                                r"conf/constraints/nope\.yaml\)\. Available: "),
    "bad_resume_path": (["train.resume={tmp}/nope"],
                        r"^FileNotFoundError: train\.resume=.*nope: no such directory\. Use "
                        r"train\.resume=auto"),
    "zero_steps": (["train.steps=0"],
                   r"^ValueError: train\.steps=0 is out of range: it must be an integer >= 1 "
                   r"\(optimizer steps\)\. Set train\.steps to"),
}


@pytest.mark.parametrize("case", CLI)
def test_bad_input_through_the_cli_exits_non_zero_with_the_clear_line(tmp_path, case):
    extra, pattern = CLI[case]
    (tmp_path / "data.jsonl").write_text(json.dumps(GOOD) + '\n{"prompt": "a", "chosen":\n')
    result = pdalign_train(
        ["model=tiny", f"data.train={FIXTURES / 'pairs.jsonl'}", "data.heldout=null",
         "logging.wandb=false", "train.steps=2", f"hydra.run.dir={tmp_path / 'run'}",
         *[o.replace("{tmp}", str(tmp_path)) for o in extra]])
    assert result.returncode == 1, result.stderr[-2000:]
    assert re.search(pattern, result.stderr, re.M), result.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_atomic_dir_replaces_whole_or_leaves_the_old_one(tmp_path):
    """A failure while filling leaves the old directory as it was and no temp dir behind; a
    success replaces it whole (no file of the old one survives)."""
    from pdalign.runfiles.atomic import atomic_dir

    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]

"""metrics.jsonl and the offline W&B run carry the same per-step keys."""

import json

from pdalign.runfiles.metrics import MetricsLogger, read_metrics, split_records
from pdalign.training.trainer import train
from tests.conftest import compose, tiny_overrides


def _wandb_history(path) -> list[dict]:
    """The history rows of an offline ``.wandb`` file, decoded: W&B writes its records in the
    LevelDB log format (a 7-byte ':W&B' header, 32 KiB blocks, each chunk behind a 7-byte
    header of crc32, length and type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4), each record a
    ``wandb_internal_pb2.Record`` protobuf. Reading the records, not grepping the bytes, keeps
    a key from matching inside another (``grad_norm`` in the config's ``max_grad_norm``)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, block, chunks, rows = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            if record.WhichOneof("record_type") == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                       for item in record.history.item}
                rows.append({k: v for k, v in row.items() if not k.startswith("_")})  # W&B's
    return rows


def test_jsonl_every_step_and_offline_wandb_run_with_the_same_keys(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login: W&B must run offline
    cfg = compose(tiny_overrides("method=primal_dual", "constraints=[kl_budget,length]",
                                 "constraints.length.epsilon=3",
                                 "train.steps=3", "logging.wandb=true",
                                 "train.rollout.prompts_per_rollout=2",
                                 "train.rollout.max_new_tokens=4"))
    train(cfg, tmp_path / "run")
    rows, evals = split_records(read_metrics(tmp_path / "run" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3]
    keys = {f"{k}/{c}" for k in ("lambda", "g", "eps", "violation")
            for c in ("kl_budget", "length")}
    assert all(keys <= set(r) for r in rows)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "expected exactly one offline W&B run"
    history = _wandb_history(next(runs[0].glob("*.wandb")))
    # W&B holds the same rows as metrics.jsonl, key for key and value for value
    assert history == rows + evals
    for key in keys | {"rewards/margins", "grad_norm", "tokens_per_s", "step"}:
        assert all(key in h for h in history[:3]), key


def test_torn_last_line_is_ignored_and_non_finite_values_stay_json(tmp_path):
    log = MetricsLogger(tmp_path, use_wandb=False)
    log.log({"step": 1, "loss": float("nan"), "g/x": float("inf")})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 2, "lo')  # a crash mid-write
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows == [{"step": 1, "loss": None, "g/x": 1e308}]
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])

"""Every shipped config composes and passes its own checks, and config mistakes
are one clear error."""

import copy
import re
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from pdalign.training.config import RANGES, check_config, check_ranges, known_keys
from tests.conftest import CONF_DIR, compose

CONF = Path(CONF_DIR)
GROUPS = ["model", "data", "peft", "method", "dual", "train", "eval", "logging"]


@pytest.mark.parametrize("group,option", [(g, p.stem) for g in GROUPS
                                          for p in sorted((CONF / g).glob("*.yaml"))])
def test_every_group_option_composes(group, option):
    cfg = compose([f"{group}={option}"])
    assert cfg[group] is not None
    check_config(cfg)  # known keys, and every knob of RANGES in range


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "constraints").glob("*.yaml")))
def test_every_constraint_composes_under_its_own_name(name):
    cfg = compose([f"constraints=[{name}]"])
    assert list(cfg.constraints) == [name]
    assert cfg.constraints[name]._target_.startswith("pdalign.constraints.")


def test_constraints_compose_together_without_overwriting_each_other():
    names = sorted(p.stem for p in (CONF / "constraints").glob("*.yaml"))
    cfg = compose([f"constraints=[{','.join(names)}]"])
    assert sorted(cfg.constraints) == names


def test_empty_constraint_list_removes_the_key():
    cfg = compose(["constraints=[]"])
    assert not (cfg.get("constraints") or {})


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_composes(name):
    cfg = compose([f"experiment={name}"])
    assert cfg.method.name and cfg.train.steps > 0
    check_config(cfg)


def test_slurm_launcher_preset_composes():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["hydra/launcher=slurm"],
                            return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.max_num_timeout == 2


def test_objective_of_every_method_exists():
    for p in (CONF / "method").glob("*.yaml"):
        cfg = compose([f"method={p.stem}"])
        assert cfg.method.objective in cfg.objectives, p.stem


def test_unknown_key_is_one_clear_error():
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as err:
        compose(["train.stepz=3"])
    assert "stepz" in str(err.value) or "stepz" in str(err.value.__cause__)


def test_unknown_constraint_names_the_available_ones():
    from pdalign.training.config import check_constraint_names

    with pytest.raises(HydraException, match="constraints/nope"):
        compose(["constraints=[nope]"])
    with pytest.raises(SystemExit) as err:
        check_constraint_names(["model=tiny", "constraints=[refusal,nope]"])
    text = str(err.value)
    assert "unknown constraint 'nope'" in text and "kl_budget" in text and "refusal" in text
    check_constraint_names(["constraints=[refusal,length]", "constraints=[]"])  # known: fine


def test_a_typo_inside_a_yaml_file_is_caught_with_a_suggestion():
    from omegaconf import OmegaConf, open_dict

    from pdalign.training.config import check_config

    cfg = compose(["model=tiny"])
    check_config(cfg)  # the shipped config is clean
    with open_dict(cfg):
        cfg.train.rollout = OmegaConf.merge(cfg.train.rollout, {"max_new_tokenz": 8})
    with pytest.raises(ValueError, match=r"train\.rollout\.max_new_tokenz .*Did you mean "
                                         r"train\.rollout\.max_new_tokens"):
        check_config(cfg)


def test_free_form_mappings_accept_user_keys():
    from omegaconf import open_dict

    from pdalign.training.config import check_config

    cfg = compose(["model=tiny", "data.columns.prompt=question"])
    with open_dict(cfg):
        cfg.model.tiny.hidden_size = 32
    check_config(cfg)


def test_every_range_names_a_shipped_key():
    """A renamed knob must take its range along, or its check is silently skipped."""
    for key in RANGES:
        group, _, rest = key.partition(".")
        assert rest in known_keys(group), key


@pytest.fixture(scope="module")
def shipped():
    return compose(["model=tiny"])


# key, the value at the edge of its range (passes), the value just past it (fails)
BOUNDARIES = [
    ("train.steps", 1, 0),
    ("train.steps", 1, True),  # bools are not integers
    ("train.batch_size", 1, 1.0),  # nor are floats
    ("train.lr", 1e-12, 0.0),
    ("train.lr", 1e3, float("inf")),
    ("train.warmup_steps", 0, -1),
    ("train.max_grad_norm", 0, -1e-9),
    ("train.schedule", "cosine", "linear"),
    ("train.share_prompt", False, 0),
    ("train.rollout.top_p", 1, 1.000001),
    ("train.rollout.temperature", 1e-6, 0),
    ("train.rollout.is_clip", 1.000001, 1),
    ("train.checkpoint_every", 0, -1),
    ("data.max_length", 2, 1),
    ("data.max_length", None, "long"),
    ("data.max_prompt_length", None, 0),
    ("eval.temperature", 0, -0.1),
    ("eval.confidence", 0.999, 1),
    ("peft.lora_dropout", 0, 1),
]


@pytest.mark.parametrize("key,edge,past", BOUNDARIES)
def test_range_boundary_passes_and_just_past_it_fails(shipped, key, edge, past):
    cfg = copy.deepcopy(shipped)
    OmegaConf.update(cfg, key, edge)
    check_ranges(cfg)
    OmegaConf.update(cfg, key, past)
    message = rf"^{re.escape(key)}=\S+ is (out of range|not valid): it must be "
    with pytest.raises(ValueError, match=message):
        check_ranges(cfg)

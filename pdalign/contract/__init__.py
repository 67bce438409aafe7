"""The constraint contract and its four kinds, the API a plugin in ``constraints/`` builds on:
`base` (the contract, the batch kind), `rollout`, `pair` and `opener` (the other kinds),
`prompts` (prompt and pair sets) and `manager` (the rollouts of the rollout kind)."""

from pdalign.contract.base import (
    BatchConstraint,
    Constraint,
    ConstraintEstimate,
    StepView,
    StopLogps,
)
from pdalign.contract.opener import OpenerConstraint
from pdalign.contract.pair import PairConstraint
from pdalign.contract.prompts import load_prompts, resolve_prompts
from pdalign.contract.rollout import RolloutConstraint, importance_weights, score_function_estimate

__all__ = ["BatchConstraint", "Constraint", "ConstraintEstimate", "OpenerConstraint",
           "PairConstraint", "RolloutConstraint", "StepView", "StopLogps", "importance_weights",
           "load_prompts", "resolve_prompts", "score_function_estimate"]

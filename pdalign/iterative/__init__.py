"""Iterative on-policy constrained DPO (``pdalign-iterate``): the round loop (`loop`), the
Lagrangian reward and its pairs (`pairs`), judges and fixed candidates (`judges`, re-exported
here: configs name them ``pdalign.iterative.<Class>``)."""

from pdalign.iterative.judges import FixedResponses, LogLikelihoodJudge, PairAnswers

__all__ = ["FixedResponses", "LogLikelihoodJudge", "PairAnswers"]

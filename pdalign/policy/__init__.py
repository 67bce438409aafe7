"""The policy as a model: loading and adapters (`models`), precision (`precision`), log-probs and
KL without full logits (`logprobs`), the reference (`reference`) and sampling (`sampling`)."""

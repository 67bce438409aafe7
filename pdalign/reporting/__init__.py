"""The report of a sweep (``pdalign-report``): a Hydra multirun directory → one table (md +
csv) and three plots.

Each run of a sweep is a directory holding ``metrics.jsonl`` (found under the sweep dir,
usually one level down), next to ``config.yaml`` (the resolved config), ``summary.json``
(written only when the run finished) and optionally ``manifest.json`` (data hashes). Runs are
grouped by method label (``dpo``, ``orpo``, ``primal_dual(dpo)``, ...) and aggregated over seeds.

What the report reads, and nothing else (keys as the trainer and evaluator log them):

- training records: ``step``, ``lambda/<c>``, ``lambda_next/<c>``, ``g/<c>``, ``eps/<c>``,
  and for rollout constraints, where logged,
  ``signal/<c>/{spread,at_budget,flat_rollouts,silent_when_flat}``
  (`pdalign.runfiles.metrics.signal_key`; runs without them report as before);
- evaluation records: ``eval/pref_accuracy`` and ``eval/<c>/<s>/{value,eps,pass,violation}``;
- ``posthoc.jsonl``, where present: records of the same form for checkpoints evaluated
  after training (``pdalign-eval --record``), read after ``metrics.jsonl``;
- ``summary.json``: ``wall_time_s``; ``manifest.json``: ``data_hashes``;
- ``config.yaml``: ``method.name``, ``method.objective``, ``seed``, ``dual.lambda_max``,
  ``constraints.<c>.lambda_max``, ``train.rollout.no_signal_after``.

Units: steps are optimizer steps (the ``step`` of a record, 1-based); λ is dimensionless; ĝ, ε
and the held-out value share the constraint's own unit (a rate, nats per token, tokens); the
violation area is in violation·steps.

Modules: `runs` (finding and reading runs), `stats` (per-run health and the aggregation over
seeds), `render` (markdown and CSV), `plots`, and `sweep.write_report`, which runs them all.
Public API, for the paper build: `runs.collect_runs`, `stats.summarize`,
`stats.paired_comparison`, `render.render_markdown`, `sweep.write_report`, and
`stats.lambda_health` / `stats.signal_health` /
`pdalign.evaluation.certificate.violation_drift` for single trajectories.
"""

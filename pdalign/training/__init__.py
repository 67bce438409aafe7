"""Training: the loop (`trainer`), the one builder from config to objects (`build`), the config
checks (`config`), the dual state (`dual`), checkpoints and resume (`checkpoint`), and the run's
provenance (`manifest`)."""

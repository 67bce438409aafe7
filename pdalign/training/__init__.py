"""Training: the loop (`trainer`), the one builder from config to objects (`build`), the config
checks (`config`), the dual state (`dual`), checkpoints and resume (`checkpoint`), the run's
provenance (`manifest`) and the memory model for sizing (`memory`)."""

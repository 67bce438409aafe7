"""The files a run writes and their formats, one writer and one parser each: atomic writes
(`atomic`), metrics and metric keys (`metrics`), the round files of an iterative run (`rounds`), the card beside an exported model
(`export_card`)."""

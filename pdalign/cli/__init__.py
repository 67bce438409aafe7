"""The commands, one module each, named after it (``pdalign-train`` is `train`, ...), and what they
share (`common`)."""

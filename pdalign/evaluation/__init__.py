"""Held-out evaluation (`heldout`), its one-sided bounds (`bounds`) and the certificate built from
them (`certificate`)."""

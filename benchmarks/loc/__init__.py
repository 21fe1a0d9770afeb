"""The localization benchmark's parts: scenes, maps of every method, metrics, default
selection on validation, and the report. ``benchmarks/localization.py`` runs them."""

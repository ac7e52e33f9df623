"""Evaluation: GenEval-format scoring rules and runners."""

"""Evaluation of a subnet's two objectives: accuracy (the subnet evaluator, accuracy predictors and
the ranking objective) and latency (a space's latency table: device, build, validation)."""

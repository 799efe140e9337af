"""Experiment configs: one ml_collections file per experiment, shared blocks in configs/common/."""

"""Studies: many cells, one report.

Owns: `runner` (a study file's cells: list, run, commands), `report`
(the tables of a finished study), `figures`, `stats` (confidence
intervals, paired tests) and `deployment` (each student's size and speed
against an edge budget).

May import: every layer below (train, deploy, data, models, distill,
config_lib) and the leaves.
"""
from kd_jax.study.runner import Study, run  # noqa: F401  (public)

"""Finished trials of a search, persisted in the nasvit database through Optuna's RDB storage.

Why Optuna's storage: it is a maintained, migrated SQL schema for exactly this record (named
parameters, objective values, attributes) that works on SQLite and PostgreSQL, and a study
written by any nasvit controller can be opened with Optuna's own tools (optuna-dashboard,
``optuna.load_study``). Every trial is stored with its categorical parameters (the one
SearchSpace -> Optuna conversion in :mod:`nasvit.searching.adapters`), the two objectives
(ranking score up, predicted latency down) and the full nasvit record as attributes.

One study per search output folder; the pipeline resumes from it, so an interrupted search,
or a service job taken over by another worker that shares the database, never re-evaluates
a finished candidate. ``trials.jsonl`` in the output folder is a plain-text copy for tools.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasvit.search_spaces import SearchSpace
from nasvit.searching.adapters import optuna_distributions, parameters_from_arch
from nasvit.settings import load_settings
from nasvit.sql import DatabaseLock, lock_across_processes

_RECORD = "nasvit_trial"


def study_name_for(out: Path) -> str:
    """The study of the search writing to ``out`` (its absolute path: one search per folder)."""
    return f"nasvit-search:{Path(out).resolve()}"


class TrialStore:
    """Trials of one search in an Optuna study.

    Args:
        space: the searched space (gives the parameter distributions).
        name: the study name (see :func:`study_name_for`).
        url: database URL; default the nasvit database of the environment's settings
            (:attr:`nasvit.settings.Settings.resolved_database_url`).
        fresh: drop trials left by an earlier search of the same name (a new search in a
            folder whose files were deleted) instead of continuing them.
    """

    def __init__(self, space: SearchSpace, name: str, url: str | None = None, fresh: bool = False):
        import optuna

        # Optuna logs every trial at INFO; the pipeline reports progress its own way.
        optuna.logging.set_verbosity(logging.WARNING)
        self.space = space
        self.name = name
        url = url or load_settings().resolved_database_url
        # Serialise the creation of Optuna's tables: two workers starting on a fresh PostgreSQL
        # database both created Optuna's version table and one failed (a unique violation).
        with lock_across_processes(url, DatabaseLock.TRIAL_SCHEMA):
            self.storage = optuna.storages.RDBStorage(url)
            if fresh:
                try:
                    optuna.delete_study(study_name=name, storage=self.storage)
                except KeyError:
                    pass  # nothing to drop
            self.study = optuna.create_study(
                study_name=name,
                storage=self.storage,
                directions=["maximize", "minimize"],
                load_if_exists=True,
            )
        self._distributions = optuna_distributions(space)

    def load(self) -> list[dict[str, Any]]:
        """Stored trial records, in evaluation order."""
        records = [t.user_attrs[_RECORD] for t in self.study.get_trials(deepcopy=False)]
        return sorted(records, key=lambda record: record["index"])

    def add(self, records: Sequence[dict[str, Any]]) -> None:
        """Store finished trials (called once per evaluated batch)."""
        import optuna

        self.study.add_trials(
            [
                optuna.trial.create_trial(
                    params=parameters_from_arch(self.space, self.space.validate(r["arch"])),
                    distributions=self._distributions,
                    values=[r["score"], r["latency_ms"]],
                    user_attrs={_RECORD: r},
                )
                for r in records
            ]
        )

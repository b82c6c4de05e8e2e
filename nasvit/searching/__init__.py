"""Search: the staged pipeline, executors, the trial store, Pareto tools, budgets, space adapters
and the Ray Tune searcher. Controllers live in :mod:`nasvit.searching.controllers`."""

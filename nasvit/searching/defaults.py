"""Defaults shared by the CLI, the pipeline and the job service (import-light: the CLI reads
them before it imports anything heavy)."""

# Candidates a search evaluates unless told otherwise: what keeps the README's main job under a
# minute once the supernet and the latency table are cached (one evaluation of the default
# efficientformer supernet costs about 0.3 s on 2 cores).
DEFAULT_EVALUATIONS = 160
# Whole networks measured to validate a latency table never validated on the searched space:
# stratified over the latency range with the space's extremes and reference subnets; about half
# fit the residency model, the rest are judged and give the intervals.
DEFAULT_VALIDATE_NETWORKS = 40

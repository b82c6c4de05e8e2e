"""Defaults shared by the CLI, the pipeline and the job service (import-light: the CLI reads
them before it imports anything heavy)."""

# Candidates a search evaluates unless told otherwise: what keeps the README's main job under a
# minute once the supernet and the latency table are cached (one evaluation of the default
# efficientformer supernet costs about 0.3 s on 2 cores).
DEFAULT_EVALUATIONS = 160
# Whole networks measured to validate a latency table never validated on the searched space;
# half of them fit the cache model's six parameters.
DEFAULT_VALIDATE_NETWORKS = 40

"""The workflow platform around training: the job store (``db``: jobs, attempts, checkpoints, sample sets
and ratings), jobs and their backends (``jobs``, ``slas jobs``), experiment tracking (``tracking``:
``metrics.jsonl`` and MLflow) and comparison sets of checkpoints (``sampling``, ``slas sample``)."""

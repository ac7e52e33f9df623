"""The shapes world: a CPU-sized text-to-image world with a ground-truth judge (GenEval schema)."""

"""The workflow platform: experiment tracking (and, later, the job store and backends)."""

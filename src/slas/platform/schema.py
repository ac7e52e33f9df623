"""The job store's tables (SQLAlchemy 2.x ORM): jobs, attempts, checkpoints, sample sets, samples, ratings,
evaluations.

The schema itself is owned by the Alembic migrations in ``slas/platform/migrations``; these classes map it.
Times are stored as timezone-aware UTC.
"""

from __future__ import annotations

import socket
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JOB_STATUSES = ("queued", "running", "completed", "failed", "cancelled")
ACTIVE_STATUSES = ("queued", "running")
FINAL_STATUSES = ("completed", "failed", "cancelled")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def hostname() -> str:
    return socket.gethostname()


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone, so it is put back on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class Job(Base):
    """One training run: its resolved config, where it runs and writes, and how it ended."""

    __tablename__ = "jobs"
    __table_args__ = (CheckConstraint(f"status IN {JOB_STATUSES}", name="ck_jobs_status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    backend: Mapped[str] = mapped_column(String(32), default="local")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    run_dir: Mapped[str] = mapped_column(Text)
    workdir: Mapped[str] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    log_path: Mapped[str | None] = mapped_column(Text)

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES


class Attempt(Base):
    """One start or resume of a job: which process ran it and how it ended."""

    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("job_id", "number", name="uq_attempts_job_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default="running")
    exit_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    resumed_from: Mapped[str | None] = mapped_column(Text)


class Checkpoint(Base):
    """A complete checkpoint the trainer published (one row per job and iteration)."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "iteration", name="uq_checkpoints_job_iteration"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    iteration: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SampleSet(Base):
    """A set of images rendered for comparison (checkpoints x prompts x seeds): the review UI's input."""

    __tablename__ = "sample_sets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Sample(Base):
    """One rendered image: which checkpoint, prompt and seed made it, and its reward components."""

    __tablename__ = "samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_set_id: Mapped[int] = mapped_column(ForeignKey("sample_sets.id", ondelete="CASCADE"), index=True)
    checkpoint_label: Mapped[str] = mapped_column(String(200))
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    prompt: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(Integer)
    image_path: Mapped[str] = mapped_column(Text)
    rewards: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    person_image: Mapped[str | None] = mapped_column(Text)  # an editing sample's inputs (0003_review)
    product_image: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Rating(Base):
    """A human judgement of one sample (``score``) or of a pair (``choice`` between sample and other)."""

    __tablename__ = "ratings"
    __table_args__ = (CheckConstraint("choice IS NOT NULL OR score IS NOT NULL", name="ck_ratings_value"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"), index=True)
    other_sample_id: Mapped[int | None] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"))
    rater: Mapped[str] = mapped_column(String(200))
    choice: Mapped[str | None] = mapped_column(String(32))
    score: Mapped[float | None] = mapped_column(Float)
    comment: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str] | None] = mapped_column(JSON)  # e.g. ["extra hand"] (0003_review)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Evaluation(Base):
    """One benchmark run on one checkpoint: what was evaluated, how, and what it scored.

    A row is what model selection and ``slas eval compare`` read, so it keeps enough to tell two
    evaluations apart (``settings``: detector, prompt set, images per prompt, seed, sampler) and where the
    per-image verdicts are (``results_path``), not only the scores. ``job_id`` is set when the checkpoint
    belongs to a known job (an evaluation during training, or ``slas eval`` on a run's checkpoint);
    ``iteration`` when the checkpoint is a trainer checkpoint.
    """

    __tablename__ = "evals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    checkpoint: Mapped[str] = mapped_column(Text)
    iteration: Mapped[int | None] = mapped_column(Integer)
    benchmark: Mapped[str] = mapped_column(String(64), index=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    scores: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    n_images: Mapped[int] = mapped_column(Integer)
    results_path: Mapped[str | None] = mapped_column(Text)
    images_dir: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def overall(self) -> float | None:
        """The benchmark's headline score (GenEval: the mean of the per-tag accuracies)."""
        value = (self.scores or {}).get("overall")
        return float(value) if isinstance(value, int | float) else None

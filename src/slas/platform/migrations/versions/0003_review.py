"""Review UI: an editing sample's input images (person, product) and a rating's tags.

An editing comparison set (person | product | edit A | edit B) needs each sample's inputs beside its
output, and a pair rating may carry tags ("extra hand", "duplicate product") that reward-model training
reads. All three columns are nullable: text-to-image samples and older ratings have none.

Revision ID: 0003_review
Revises: 0002_evals
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_review"
down_revision = "0002_evals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("samples") as batch:  # batch: SQLite cannot drop columns in place on downgrade
        batch.add_column(sa.Column("person_image", sa.Text(), nullable=True))
        batch.add_column(sa.Column("product_image", sa.Text(), nullable=True))
    with op.batch_alter_table("ratings") as batch:
        batch.add_column(sa.Column("tags", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ratings") as batch:
        batch.drop_column("tags")
    with op.batch_alter_table("samples") as batch:
        batch.drop_column("product_image")
        batch.drop_column("person_image")

"""The Gradio review app over the job store: blind side-by-side ratings, leaderboard, run views.

Layout: :mod:`.handlers` (pairs and ratings as plain functions), :mod:`.leaderboard` (win rates,
Bradley-Terry, agreement), :mod:`.imagefiles` (which files may be shown), :mod:`.auth` (who may connect),
:mod:`.app` (the Gradio Blocks wiring). Nothing below ``slas.ui`` imports it.
"""

import os

# Gradio phones home (usage analytics, version check) unless told not to; a review server must not.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_TELEMETRY_ENABLED", "False")

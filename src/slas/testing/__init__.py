"""Offline test helpers: tiny randomly initialised diffusers pipelines (see :mod:`slas.testing.tiny`)."""

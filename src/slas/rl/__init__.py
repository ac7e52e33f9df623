"""The model-agnostic RL engine: protocols (``protocols``), advantages, objectives, the trainer, callbacks,
atomic checkpoints and distributed helpers. It imports only itself and slas's leaf helpers (config, errors,
paths, images, torch utils): a concrete model, reward, data set or tracker plugs in through ``protocols``."""

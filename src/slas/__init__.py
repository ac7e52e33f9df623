"""slas: Super-Linear Advantage Shaping for diffusion RL post-training."""

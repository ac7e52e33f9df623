"""Model-agnostic RL: advantages, policy loss, trajectories and the trainer."""

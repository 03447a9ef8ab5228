"""Training: the stage-2 losses and divergences, the pretraining and one-step tasks, and the one loop."""

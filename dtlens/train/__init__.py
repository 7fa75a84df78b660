"""Fine-tuning Decision Transformers: run folders, the training loop, evaluation rollouts."""

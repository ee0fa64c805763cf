"""Training: configuration and presets, data and augmentation, losses, the trainer (resume, DDP)."""

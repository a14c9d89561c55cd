"""DeepSpeed training: config, engine set-up, loop, checkpoints, export and monitoring."""

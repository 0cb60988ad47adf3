"""The run: its life from config to result file (runner), each phase (steps), the record that is always written,
resume, checkpoints, signals, skip-existing, validation, Hydra glue, result files and the console."""

"""Training: the Lightning modules (module), multi-GPU strategies (strategies) and the forgetting probe."""

"""The calibration engine: runs calibration batches through the frozen model and returns per-layer statistics.

One place for every data-driven init:

- :func:`collect_output_moments`: per-sample normalised second moments of each target layer's OUTPUT (Astra),
  accumulated either on the output side (d_out^2 per token) or on the input side (d_in^2 per token, the output
  moment being W M W^T), whichever is cheaper, with forward hooks; layers reading one input (q/k/v, gate/up)
  share per-sample input moments X_n^T X_n and fold them in with their own per-sample weights;
- :func:`collect_weight_gradients`: the full-weight gradient of each target layer's base weight averaged over the
  calibration batches (LoRA-GA), folded layer by layer into float32 running sums as backward produces it.

Both stream (running sums only), restore modes, ``requires_grad`` and hooks even on error, can process a group of
layers per pass over the data (``layers_per_pass``), keep results on CPU (``offload_to_cpu``) and cache results on
disk keyed by content (:mod:`astra.calibration.identity`: model fingerprint, calibration-data digest) and the
statistics options.

Each name is imported from its module (``astra.calibration.moments.collect_output_moments``).
"""

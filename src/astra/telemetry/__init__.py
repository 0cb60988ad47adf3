"""Training telemetry: Lightning callbacks (loss and learning rate, gradient norms, effective rank, run facts),
their loggers (W&B offline, CSV) and the summary figures that go into the result file.

Import each name from its module (``astra.telemetry.rank.EffectiveRankMonitor``); ``conf/callbacks`` names them so.
"""

"""Comparisons by a protocol written down before the runs: ``python -m astra.compare experiment=<name>`` selects each
arm's rate on validation rows by a fixed rule, tests the arms at those rates over several seeds, and reports each
pre-registered contrast with a two-level (seeds and items) bootstrap interval and the design's minimum detectable
difference. See docs/compare.md."""

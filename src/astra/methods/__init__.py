"""Adapter initialisation methods. One module per method, one YAML in conf/method/ each."""

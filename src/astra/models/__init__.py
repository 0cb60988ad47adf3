"""Models: building them and their tokenizers (build), where weights come from (sources), adapter export
(export) and the PEFT adapter layers (adapters)."""

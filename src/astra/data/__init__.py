"""Task data: reading rows, formatting them into prompt/answer pairs, tokenising, batching."""

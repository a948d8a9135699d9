"""The runnable study: GQA model, training, profiling (imports kernels and costlaw, never the reverse)."""

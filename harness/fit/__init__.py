"""harness-fit: will a training step fit on a TPU pod? Compiles the real train step for a
TPU topology on a CPU machine (libtpu, no TPU) and reports memory, FLOPs, collectives."""

"""podharness: prove a multi-host JAX training stack works before paying for pod hours."""

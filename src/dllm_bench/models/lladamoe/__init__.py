"""The suite's own LLaDA-MoE model (an architecture of the `llada` kind)."""

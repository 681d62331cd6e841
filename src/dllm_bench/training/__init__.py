"""Training of the small models shipped with the suite (``dllm-bench-train``)."""

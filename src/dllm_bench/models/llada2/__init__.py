"""The suite's own LLaDA2.0 / LLaDA2.1 MoE model classes and their checkpoint format."""

"""Dream (Dream-v0 and its descendants): the suite's own model class and checkpoint loader."""

"""Training a recipe: setup (build), pipeline (run), finish (outputs), the Trainer, the feature cache, faults,
the pre-flight, lr-find, the self-training loops and the optional training blocks (features/)."""

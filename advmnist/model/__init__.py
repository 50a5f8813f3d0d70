"""The CNN: its graph, tensorpack training, run folders, freezing, and loading a frozen model."""

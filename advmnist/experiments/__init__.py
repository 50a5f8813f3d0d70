"""One module per experiment (settings, run, summary), their result files and shard merges."""

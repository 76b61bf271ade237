"""monitor/remote."""

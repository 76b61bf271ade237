"""monitor/hubs."""

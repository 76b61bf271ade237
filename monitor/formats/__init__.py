"""monitor/formats."""

"""monitor/localhub."""

"""monitor/synth."""

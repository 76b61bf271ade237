"""HubSentry's I/O side: hub sources, remote reads, registry, scheduler, alerts and the CLI.

Everything that touches the network, the disk or the clock lives here; the statistics live in the
pure `fingerprints` package.
"""

__version__ = "0.1.0"

"""The on-vehicle runtime: sources → decode → buffer → features/inference → alerts → uplink."""

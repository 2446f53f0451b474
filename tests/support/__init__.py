"""Test helpers: synthetic media (videos.py), tiny exports (exports.py), oracles, a live-server helper and a
simulated multi-node cluster (cluster_sim.py, run as a child process)."""

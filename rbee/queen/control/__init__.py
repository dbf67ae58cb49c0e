"""The queen's control plane: plan and apply (`control`, the one owner of the apply lock),
self-heal (`heal`), autoscaling (`autoscale`), hives' lifecycle and registry, certificate
renewal, and the queen's SQLite (`store`: every table, and the jobs' table).
"""

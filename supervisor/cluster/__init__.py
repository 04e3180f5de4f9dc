"""Cluster mode: which node runs which shard groups (rules), the leases in Redis (store), the rounds (node), the arbiter's side (member)."""

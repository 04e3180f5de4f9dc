"""Who may IDENTIFY when: the gate (buckets, pacing), the daily budget, its reserve and its refresh from Discord."""

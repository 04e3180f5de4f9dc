"""Live resharding: the plan and its checks, the new set's run beside the old one, and --auto-reshard."""

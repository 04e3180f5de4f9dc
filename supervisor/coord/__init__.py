"""Redis, never on the arbiter's loop: the coordinator's atomic scripts and the thread that runs them."""

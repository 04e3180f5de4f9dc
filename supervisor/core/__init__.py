"""The arbiter's loop and what it owns directly: the groups' children, their exits, the sessions, the control socket."""

"""The settings of `start`: flags, environment, the TOML file, their checks and defaults."""

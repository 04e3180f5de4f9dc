"""Spectacles gateway worker: one process running a group of Discord shards bridged to AMQP."""

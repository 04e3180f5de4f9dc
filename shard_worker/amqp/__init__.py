"""The worker's RabbitMQ side: the bridge (publish, confirm, consume), its ledger, connection parameters and frames."""

"""The online trainer process (``barp-trainer serve``): ingestion, durable log, learner, gate."""

"""Reward path of the sidecar: pending decisions, outcome recording, the durable spool and its publisher."""

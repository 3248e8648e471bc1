"""Routing decisions: request validation, defaults, masks, exploration (RoutingService)."""

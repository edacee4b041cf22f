"""Webhook sources: one module per kind of sender, each turning a verified body into events."""

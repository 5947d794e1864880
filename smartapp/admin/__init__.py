"""Governance: metrics, rollout, engine change control, audit."""

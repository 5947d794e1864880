"""The governance store: rollout rules, kill switches, engine versions and their change
control, evaluation runs, flag reviews, and the model cards built from them.

What the rest of the app calls (see each module):
- `smartapp.governance.state.load_state(session) -> GovernanceState`, which
  `smartapp.policy` caches
- `smartapp.governance.rollout.is_enabled(session, *, site, kind, fhir_user, now)`
- `smartapp.governance.registry.active_engine(session, *, kind, site) -> ActiveEngine | None`
- `smartapp.governance.model_cards.card_for(session, *, engine, version)` (the sidebar's "About")

It sits below `smartapp.policy`, `smartapp.notes` and `smartapp.admin` (the dashboard):
each of them reads it, it reads none of them (tests/unit/test_import_layers.py).
"""

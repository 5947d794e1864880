"""Suggestion engines (built-in rules, an OpenAI-compatible LLM) and the grounding verifier.

Knows neither Flask nor HTTP to the EHR: takes a chart snapshot, returns cited statements.
"""

"""SMART App Launch 2.x client: discovery, PKCE, launch, tokens, the launch session.

Knows OAuth, not clinical content. https://hl7.org/fhir/smart-app-launch/
"""

"""The embedded sandbox EHR: a SMART authorization server, a FHIR R4 API and an EHR page.

A stranger to the app: it shares no code with `smartapp.smart` or `smartapp.fhir`, so
testing one against the other catches the bugs of both sides.
"""

"""The FHIR R4 client (the only code that talks HTTP to the EHR) and the chart snapshot.

Knows FHIR, not Flask. https://hl7.org/fhir/R4/http.html
"""

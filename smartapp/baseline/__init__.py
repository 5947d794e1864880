"""A documentation baseline from the EHR: note completion lag and note length per clinician
and ISO week, read by SMART Backend Services and FHIR Bulk Data `$export`.

`aggregate` turns exported Encounters and DocumentReferences into per-clinician weekly
aggregates (pure); `models` stores only those aggregates; `service` runs the export;
`cli` is `smartapp baseline`. The dashboard's before/after view is `smartapp.admin.baseline`.
https://hl7.org/fhir/smart-app-launch/backend-services.html
https://hl7.org/fhir/uv/bulkdata/export.html
"""

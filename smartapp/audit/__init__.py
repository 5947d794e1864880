"""The audit trail: every PHI access and every admin action, append-only, exportable as FHIR.

https://hl7.org/fhir/R4/auditevent.html
"""

from __future__ import annotations

from smartapp.audit.log import Action, AuditQuery, record, search

__all__ = ["Action", "AuditQuery", "record", "search"]

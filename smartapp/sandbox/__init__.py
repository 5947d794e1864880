"""The embedded sandbox EHR: a SMART authorization server, a FHIR R4 API and an EHR page.

A stranger to the app: it shares no code with `smartapp.smart` or `smartapp.fhir`, so
testing one against the other catches the bugs of both sides.
Spec: https://hl7.org/fhir/smart-app-launch/

Build it with `smartapp.sandbox.ehr.create_ehr_app(...)`, serve it with
`smartapp.sandbox.server.BackgroundServer`. With `ehr_base_url` = E:

- EHR screens: `GET E/` (patient list), `GET E/patients/<id>` (chart + app iframe),
  `POST E/session/user` (form field `user`: who is signed in; cookie `ehr_user`).
- SMART: `GET E/fhir/.well-known/smart-configuration`, `E/fhir/.well-known/openid-configuration`,
  `GET|POST E/auth/authorize`, `POST E/auth/token`, `GET E/auth/jwks.json`,
  `GET E/auth/smart-style.json`. The standalone sign-in page posts back to
  `E/auth/authorize` with the original authorize parameters plus `user` (Practitioner id),
  `patient` (Patient id, required when `launch/patient` was asked) and `decision`
  (`approve` | `deny`).
- FHIR R4 (bearer token): `E/fhir/metadata`, read, search, create, update, batch and
  transaction at `E/fhir`.
- Sandbox-only controls (loopback callers, no token): `E/_sandbox/` and below — see
  `smartapp.sandbox.controls`.
"""

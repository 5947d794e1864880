"""The launch's rows: authorizations under way, and launch sessions with their tokens.

Random values the browser holds (state, session cookie) are stored only as SHA-256
hashes; access and refresh tokens only encrypted (see `crypto.py`). A launch's tokens
are also held, as a copy, for work it left pending (a note to deliver) after the launch
itself has ended (`HeldGrant`).
https://hl7.org/fhir/smart-app-launch/app-launch.html#considerations-for-oauth-state
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from smartapp.db import Base, UTCDateTime, utcnow


class PendingAuthorization(Base):
    """One authorize request, between /launch (or admin sign-in) and /callback. Single use."""

    __tablename__ = "smart_pending_authorization"

    #: SHA-256 hex of the `state` sent to the authorization server.
    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: SHA-256 hex of the browser-binding cookie set with the redirect.
    binding_hash: Mapped[str] = mapped_column(String(64))
    iss: Mapped[str] = mapped_column(Text)
    launch: Mapped[str | None] = mapped_column(Text, default=None)
    #: Encrypted: with an intercepted code it would redeem the token.
    code_verifier_enc: Mapped[str] = mapped_column(Text)
    nonce: Mapped[str | None] = mapped_column(String(128), default=None)
    requested_scope: Mapped[str] = mapped_column(Text)
    redirect_uri: Mapped[str] = mapped_column(Text)
    # The endpoints discovered at launch, so the callback needs no second discovery.
    issuer: Mapped[str | None] = mapped_column(Text, default=None)
    authorization_endpoint: Mapped[str] = mapped_column(Text)
    token_endpoint: Mapped[str] = mapped_column(Text)
    jwks_uri: Mapped[str | None] = mapped_column(Text, default=None)
    purpose: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class LaunchSession(Base):
    """A launched app: its context, the granted scopes and the (encrypted) tokens."""

    __tablename__ = "smart_launch_session"
    __table_args__ = (Index("ix_smart_launch_session_expiry", "absolute_expires_at"),)

    #: SHA-256 hex of the opaque session cookie value (256 random bits).
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    iss: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(String(16))
    token_endpoint: Mapped[str] = mapped_column(Text)
    access_token_enc: Mapped[str | None] = mapped_column(Text)
    refresh_token_enc: Mapped[str | None] = mapped_column(Text, default=None)
    #: When the access token expires (None when the server gave no expires_in).
    access_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    scope: Mapped[str] = mapped_column(Text)
    patient: Mapped[str | None] = mapped_column(String(128), default=None)
    encounter: Mapped[str | None] = mapped_column(String(128), default=None)
    fhir_user: Mapped[str | None] = mapped_column(String(256), default=None)
    fhir_user_raw: Mapped[str | None] = mapped_column(Text, default=None)
    id_token_sub: Mapped[str | None] = mapped_column(Text, default=None)
    need_patient_banner: Mapped[bool] = mapped_column(Boolean, default=False)
    smart_style_url: Mapped[str | None] = mapped_column(Text, default=None)
    tenant: Mapped[str | None] = mapped_column(Text, default=None)
    intent: Mapped[str | None] = mapped_column(Text, default=None)
    #: JSON list of the token response's fhirContext objects.
    fhir_context: Mapped[str | None] = mapped_column(Text, default=None)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_refreshed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    #: The session ends at the first of: idle since `last_seen_at` + idle timeout, or this.
    absolute_expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class HeldGrant(Base):
    """A launch's tokens, held for the work it left to do after it ends (a note to deliver).

    Copied from the launch session when a note is saved (the same ciphertexts) and kept in
    step with it while it lives (a refresh updates both, since a rotated refresh token
    spends the old one), so that ending the launch (the next launch in the same browser
    deletes it, or it expires) does not strand the note: the outbox delivers it with
    these once the EHR answers. Deleted when no pending note needs it, at logout, or at
    `absolute_expires_at`.
    """

    __tablename__ = "smart_held_grant"

    #: The launch session's id it was copied from (the notes name it).
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    iss: Mapped[str] = mapped_column(Text)
    token_endpoint: Mapped[str] = mapped_column(Text)
    access_token_enc: Mapped[str | None] = mapped_column(Text)
    refresh_token_enc: Mapped[str | None] = mapped_column(Text, default=None)
    access_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    scope: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_refreshed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    #: Held no longer than this (renewed by each note saved with the launch).
    absolute_expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)

"""The SMART collaborators one app shares: settings, store, HTTP session, OAuth client, caches.

Built once in `views.init_app` and kept in `app.extensions`; code that runs outside a
request (the FHIR client's worker threads) holds a reference instead of `current_app`.
https://hl7.org/fhir/smart-app-launch/
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

import requests
from flask import Flask, current_app

from smartapp.config import Settings
from smartapp.db import Database
from smartapp.httplimits import limited_session
from smartapp.smart.client import AUTH_MAX_BYTES, DEFAULT_TIMEOUT, ClientAuthentication, SMARTClient
from smartapp.smart.crypto import TokenCipher
from smartapp.smart.discovery import DiscoveryCache, SMARTConfiguration, discover
from smartapp.smart.idtoken import JWKSCache
from smartapp.smart.keys import SigningKey, load_signing_key

EXTENSION_KEY = "smartapp.smart"


class KeyedLocks:
    """One lock per key (a session id), dropped when nobody holds a reference to it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: weakref.WeakValueDictionary[str, threading.Lock] = (
            weakref.WeakValueDictionary()
        )

    def get(self, key: str) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(key)
            if lock is None:
                lock = threading.Lock()
                self._locks[key] = lock
            return lock


@dataclass(kw_only=True)
class SMARTServices:
    settings: Settings
    db: Database
    client: SMARTClient
    cipher: TokenCipher
    signing_key: SigningKey | None
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT
    discovery_cache: DiscoveryCache = field(default_factory=DiscoveryCache)
    jwks_cache: JWKSCache = field(default_factory=JWKSCache)
    refresh_locks: KeyedLocks = field(default_factory=KeyedLocks)

    @classmethod
    def build(cls, settings: Settings, db: Database) -> SMARTServices:
        """Reads SMARTAPP_PRIVATE_KEY now, so a bad key stops start-up with a clear message."""
        signing_key = (
            load_signing_key(settings.private_key_path) if settings.private_key_path else None
        )
        return cls(
            settings=settings,
            db=db,
            client=SMARTClient(
                auth=ClientAuthentication.from_settings(settings, signing_key),
                deadline=float(settings.fhir_deadline_seconds),
            ),
            cipher=TokenCipher(settings.secret_key, previous=settings.previous_secret_keys),
            signing_key=signing_key,
        )

    def discover(self, iss: str) -> SMARTConfiguration:
        """Discovery for an issuer ALREADY checked against the allow-list."""
        with self.http_session() as http:
            return discover(iss, http=http, timeout=self.timeout, cache=self.discovery_cache)

    def http_session(self) -> requests.Session:
        """A session for one exchange with an authorization server, closed by its `with`.

        Short-lived on purpose: discovery and JWKS are cached, and nothing is left open
        when the app is discarded (tests, reloads).
        """
        return limited_session(deadline=self.client.deadline, max_bytes=AUTH_MAX_BYTES)


def get_services(app: Flask | None = None) -> SMARTServices:
    services: SMARTServices = (app or current_app).extensions[EXTENSION_KEY]
    return services

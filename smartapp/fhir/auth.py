"""How the FHIR client gets its bearer token, without knowing OAuth (`smart/` implements it)."""

from __future__ import annotations

from typing import Protocol


class TokenProvider(Protocol):
    def access_token(self) -> str:
        """A current access token, refreshed first if it is about to expire."""
        ...

    def refresh(self) -> str:
        """Force a refresh after the server answered 401.

        Raises `smartapp.errors.RelaunchRequired` when there is no refresh token or the
        authorization server refuses it: the clinician must relaunch from the EHR.
        """
        ...


class StaticToken:
    """A fixed token that cannot be refreshed (the benchmark, tests, one-off tools)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def access_token(self) -> str:
        return self._token

    def refresh(self) -> str:
        from smartapp.errors import RelaunchRequired

        raise RelaunchRequired()

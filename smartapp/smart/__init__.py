"""SMART App Launch 2.x client: discovery, PKCE, launch, tokens, the launch session.

Knows OAuth, not clinical content. https://hl7.org/fhir/smart-app-launch/

    discovery.py  SMARTConfiguration, discover()           .well-known, CapabilityStatement
    pkce.py       make_verifier(), s256_challenge()         RFC 7636
    scopes.py     GrantedScopes                             v2 and v1 scopes
    keys.py       SigningKey, public_jwks(), client_assertion()   private_key_jwt
    idtoken.py    validate_id_token()                       fhirUser via smartapp.identity
    client.py     SMARTClient, TokenResponse                authorize URL, code, refresh
    crypto.py     TokenCipher, hash_secret()                tokens at rest
    models.py     PendingAuthorization, LaunchSession
    flow.py       begin(), complete()                       the authorization-code flow
    session.py    LaunchContext, current_launch(), token_provider()
    services.py   SMARTServices                             per-app collaborators
    views.py      /launch, /callback, /.well-known/jwks.json, start_authorization()
"""

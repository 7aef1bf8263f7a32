from __future__ import annotations

import base64
import time

import httpx
import pytest
import respx

from consent_middleware._exceptions import IdentityProviderError, IdTokenError, TokenEndpointError
from consent_middleware._oidc import (
    JWKS_MIN_REFETCH_INTERVAL,
    METADATA_RETRY,
    METADATA_TTL,
    OIDCClient,
)
from consent_middleware._transactions import Transaction
from tests.conftest import DISCOVERY, DOMAIN, ISSUER, idp, make_settings
from tests.keys import SigningKey, id_token_claims

pytestmark = pytest.mark.anyio


def authorize_params(tx: Transaction) -> dict[str, str]:
    return {"state": tx.state, "nonce": tx.nonce, "code_verifier": tx.code_verifier}


async def test_authorization_url_has_pkce_state_nonce_and_forwarded_params(
    signing_key: SigningKey, oidc: OIDCClient
) -> None:
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        tx = Transaction("https://app.example.com/x")
        url = httpx.URL(
            await oidc.authorization_url(
                **authorize_params(tx),
                extra={
                    "prompt": "login",
                    "screen_hint": "signup",
                    "client_id": "evil",
                    "redirect_uri": "https://evil.example",
                },
            )
        )
    params = url.params
    assert str(url).startswith(f"{DOMAIN}/authorize?")
    assert params["client_id"] == "client-1"
    assert params["redirect_uri"] == "https://app.example.com/auth/callback"
    assert params["response_type"] == "code"
    assert params["state"] == tx.state and params["nonce"] == tx.nonce
    assert params["code_challenge_method"] == "S256"
    assert params["code_challenge"] != tx.code_verifier
    assert "offline_access" in params["scope"].split()
    assert params["prompt"] == "login" and params["screen_hint"] == "signup"


ORDERS = "https://orders.example.com"


@pytest.mark.parametrize(
    ("parameter", "token_path", "api", "sent"),
    [
        ("auto", "/oauth/token", ORDERS, "audience"),  # Auth0
        ("auto", "/token", ORDERS, "resource"),  # an RFC 8707 provider (oidc-provider's path)
        # Not a URI, so never a resource: sent as before, which such a provider ignores.
        ("auto", "/token", "my-api", "audience"),
        ("resource", "/oauth/token", ORDERS, "resource"),
        ("audience", "/token", ORDERS, "audience"),
    ],
)
async def test_the_api_is_named_as_the_provider_takes_it(
    signing_key: SigningKey,
    http: httpx.AsyncClient,
    parameter: str,
    token_path: str,
    api: str,
    sent: str,
) -> None:
    # RFC 8707 2.1: a resource the login asked for is one its refresh token may serve, and
    # 2.2: the code exchange names it too, or the access token is only for userinfo.
    oidc = OIDCClient(make_settings(audience=api, audience_parameter=parameter), http)
    tx = Transaction("https://app.example.com/")
    id_token = signing_key.sign(id_token_claims(ISSUER, "client-1", nonce=tx.nonce))
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key], token_endpoint=f"{DOMAIN}{token_path}")
        token = mock.post(f"{DOMAIN}{token_path}").respond(
            json={"access_token": "at", "id_token": id_token}
        )
        url = httpx.URL(await oidc.authorization_url(**authorize_params(tx), extra=None))
        await oidc.authorization_code_grant("c", code_verifier=tx.code_verifier, nonce=tx.nonce)
    other = "resource" if sent == "audience" else "audience"
    assert url.params[sent] == api and other not in url.params
    form = dict(httpx.QueryParams(token.calls.last.request.content.decode()))
    assert form.get("resource") == (api if sent == "resource" else None)


async def test_prompt_none_wins_over_a_forwarded_prompt(
    signing_key: SigningKey, oidc: OIDCClient
) -> None:
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        tx = Transaction("https://app.example.com/")
        url = httpx.URL(
            await oidc.authorization_url(
                **authorize_params(tx), extra={"prompt": "login"}, prompt="none"
            )
        )
    assert url.params["prompt"] == "none"


async def test_discovery_issuer_mismatch_is_refused(oidc: OIDCClient) -> None:
    with respx.mock(assert_all_called=False) as mock:
        mock.get(f"{DOMAIN}/.well-known/openid-configuration").respond(
            json={**DISCOVERY, "issuer": "https://evil.example/"}
        )
        with pytest.raises(IdentityProviderError, match="issuer"):
            await oidc.metadata()


@pytest.mark.parametrize(
    "response",
    [httpx.Response(500), httpx.Response(200, text="<html>"), httpx.Response(200, json=[1])],
)
async def test_discovery_failures(response: httpx.Response, oidc: OIDCClient) -> None:
    with respx.mock(assert_all_called=False) as mock:
        mock.get(f"{DOMAIN}/.well-known/openid-configuration").mock(return_value=response)
        with pytest.raises(IdentityProviderError):
            await oidc.metadata()


async def test_discovery_timeout_is_an_idp_error(oidc: OIDCClient) -> None:
    with respx.mock(assert_all_called=False) as mock:
        mock.get(f"{DOMAIN}/.well-known/openid-configuration").mock(
            side_effect=httpx.ConnectTimeout("slow")
        )
        with pytest.raises(IdentityProviderError, match="ConnectTimeout"):
            await oidc.metadata()


async def test_discovery_is_cached(signing_key: SigningKey, oidc: OIDCClient) -> None:
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        await oidc.metadata()
        await oidc.metadata()
        assert mock.calls.call_count == 1


async def test_a_failed_refetch_keeps_the_last_document_and_waits_to_ask_again(
    signing_key: SigningKey, oidc: OIDCClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr("consent_middleware._oidc.time.monotonic", lambda: now[0])
    url = f"{DOMAIN}/.well-known/openid-configuration"
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        loaded = await oidc.metadata()
        mock.get(url).respond(503)
        now[0] += METADATA_TTL + 1
        assert await oidc.metadata() is loaded  # the provider is away: the last one kept
        assert await oidc.metadata() is loaded  # and not asked again on every call
        assert mock.calls.call_count == 2 and oidc.has_metadata
        now[0] += METADATA_RETRY + 1
        idp(mock, [signing_key])
        await oidc.metadata()
        assert mock.calls.call_count == 3


async def test_code_exchange_uses_basic_auth_and_verifies(
    signing_key: SigningKey, oidc: OIDCClient
) -> None:
    tx = Transaction("https://app.example.com/")
    id_token = signing_key.sign(id_token_claims(ISSUER, "client-1", nonce=tx.nonce))
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        token = mock.post(f"{DOMAIN}/oauth/token").respond(
            json={
                "access_token": "at",
                "id_token": id_token,
                "refresh_token": "rt",
                "expires_in": 86400,
                "scope": "openid offline_access",
                "token_type": "Bearer",
            }
        )
        result = await oidc.authorization_code_grant(
            "the-code", code_verifier=tx.code_verifier, nonce=tx.nonce
        )
    request = token.calls.last.request
    expected = base64.b64encode(b"client-1:client-secret-1").decode()
    assert request.headers["authorization"] == f"Basic {expected}"
    form = dict(httpx.QueryParams(request.content.decode()))
    assert form == {
        "grant_type": "authorization_code",
        "code": "the-code",
        "redirect_uri": "https://app.example.com/auth/callback",
        "code_verifier": tx.code_verifier,
    }
    assert result.claims["sub"] == "auth0|user1"
    assert result.token_set.refresh_token == "rt"
    assert result.token_set.expires_at >= int(time.time()) + 86000


async def test_client_secret_post_when_basic_is_not_offered(
    signing_key: SigningKey, oidc: OIDCClient
) -> None:
    tx = Transaction("https://app.example.com/")
    id_token = signing_key.sign(id_token_claims(ISSUER, "client-1", nonce=tx.nonce))
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key], token_endpoint_auth_methods_supported=["client_secret_post"])
        token = mock.post(f"{DOMAIN}/oauth/token").respond(
            json={"access_token": "at", "id_token": id_token}
        )
        await oidc.authorization_code_grant("c", code_verifier=tx.code_verifier, nonce=tx.nonce)
    request = token.calls.last.request
    assert "authorization" not in request.headers
    form = dict(httpx.QueryParams(request.content.decode()))
    assert form["client_id"] == "client-1" and form["client_secret"] == "client-secret-1"


async def test_token_endpoint_error_is_kept(signing_key: SigningKey, oidc: OIDCClient) -> None:
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        mock.post(f"{DOMAIN}/oauth/token").respond(
            400, json={"error": "invalid_grant", "error_description": "bad code"}
        )
        with pytest.raises(TokenEndpointError) as info:
            await oidc.authorization_code_grant("c", code_verifier="v", nonce="n")
    assert info.value.error == "invalid_grant"


async def test_unknown_kid_refetches_jwks_once_then_rejects(
    signing_key: SigningKey, other_key: SigningKey, oidc: OIDCClient
) -> None:
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        jwks = mock.routes[1]
        await oidc.verify_id_token(signing_key.sign(id_token_claims(ISSUER, "client-1")), "n-1")
        assert jwks.call_count == 1
        forged = other_key.sign(id_token_claims(ISSUER, "client-1"), kid="unknown")
        # Straight after a fetch, an unknown kid does not refetch at all.
        with pytest.raises(IdTokenError, match="does not publish"):
            await oidc.verify_id_token(forged, "n-1")
        assert jwks.call_count == 1
        oidc._jwks_fetched_at -= JWKS_MIN_REFETCH_INTERVAL
        with pytest.raises(IdTokenError, match="does not publish"):
            await oidc.verify_id_token(forged, "n-1")
        assert jwks.call_count == 2
        # Within the rate limit, more unknown kids do not reach the IdP.
        for _ in range(5):
            with pytest.raises(IdTokenError):
                await oidc.verify_id_token(forged, "n-1")
        assert jwks.call_count == 2


async def test_key_rotation_is_picked_up(
    signing_key: SigningKey, other_key: SigningKey, oidc: OIDCClient
) -> None:
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        await oidc.verify_id_token(signing_key.sign(id_token_claims(ISSUER, "client-1")), "n-1")
        mock.get(f"{DOMAIN}/.well-known/jwks.json").respond(
            json={"keys": [signing_key.public_jwk, other_key.public_jwk]}
        )
        oidc._jwks_fetched_at -= JWKS_MIN_REFETCH_INTERVAL
        claims = await oidc.verify_id_token(
            other_key.sign(id_token_claims(ISSUER, "client-1")), "n-1"
        )
    assert claims["sub"] == "auth0|user1"


async def test_refresh_token_grant_returns_new_tokens_and_claims(
    signing_key: SigningKey, oidc: OIDCClient
) -> None:
    new_id_token = signing_key.sign(
        id_token_claims(ISSUER, "client-1", nonce=None, **{"https://c/x": {"given": True}})
    )
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        token = mock.post(f"{DOMAIN}/oauth/token").respond(
            json={"access_token": "at-2", "id_token": new_id_token, "refresh_token": "rt-2"}
        )
        result = await oidc.refresh_token_grant("rt-1", sub="auth0|user1")
        form = dict(httpx.QueryParams(token.calls.last.request.content.decode()))
        assert form == {"grant_type": "refresh_token", "refresh_token": "rt-1"}
        assert result.token_set.refresh_token == "rt-2"
        assert result.token_set.access_token == "at-2"
        assert result.claims["https://c/x"] == {"given": True}
        # Without rotation the old refresh token is kept.
        token.respond(json={"access_token": "at-3", "id_token": new_id_token})
        again = await oidc.refresh_token_grant("rt-2", sub="auth0|user1")
        assert again.token_set.refresh_token == "rt-2"


async def test_refresh_for_another_user_is_refused(
    signing_key: SigningKey, oidc: OIDCClient
) -> None:
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        mock.post(f"{DOMAIN}/oauth/token").respond(
            json={
                "access_token": "a",
                "id_token": signing_key.sign(id_token_claims(ISSUER, "client-1")),
            }
        )
        with pytest.raises(IdTokenError, match="different user"):
            await oidc.refresh_token_grant("rt", sub="auth0|someone")


async def test_at_hash_is_checked_when_present(signing_key: SigningKey, oidc: OIDCClient) -> None:
    claims = id_token_claims(ISSUER, "client-1", nonce=None)
    # at_hash of a different access token (OIDC Core 3.1.3.8: binding when present).
    claims["at_hash"] = "AAAAAAAAAAAAAAAAAAAAAA"
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        mock.post(f"{DOMAIN}/oauth/token").respond(
            json={"access_token": "at-2", "id_token": signing_key.sign(claims)}
        )
        with pytest.raises(IdTokenError, match="at_hash"):
            await oidc.refresh_token_grant("rt", sub="auth0|user1")


async def test_client_credentials_grant(signing_key: SigningKey, oidc: OIDCClient) -> None:
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        token = mock.post(f"{DOMAIN}/oauth/token").respond(
            json={"access_token": "m2m", "expires_in": 600, "token_type": "Bearer"}
        )
        granted = await oidc.client_credentials_grant(
            client_id="m2m-client", client_secret="m2m-secret", audience=f"{DOMAIN}/api/v2/"
        )
    assert granted.token == "m2m" and granted.expires_in == 600
    form = dict(httpx.QueryParams(token.calls.last.request.content.decode()))
    assert form == {"grant_type": "client_credentials", "audience": f"{DOMAIN}/api/v2/"}
    expected = base64.b64encode(b"m2m-client:m2m-secret").decode()
    assert token.calls.last.request.headers["authorization"] == f"Basic {expected}"


async def test_translated_errors_keep_their_cause(oidc: OIDCClient) -> None:
    with respx.mock(assert_all_called=False) as mock:
        mock.get(f"{DOMAIN}/.well-known/openid-configuration").mock(
            side_effect=httpx.ConnectError("refused")
        )
        with pytest.raises(IdentityProviderError) as info:
            await oidc.metadata()
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    # Where it looked: AUTH0_DOMAIN given without "http://" is asked over https.
    assert f"at {DOMAIN}/.well-known/openid-configuration: ConnectError" in str(info.value)


async def test_logout_urls(signing_key: SigningKey, http: httpx.AsyncClient) -> None:
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key], end_session_endpoint=f"{DOMAIN}/oidc/logout")
        url = httpx.URL(
            await OIDCClient(make_settings(), http).logout_url("idt", "https://app.example.com/")
        )
    assert url.path == "/oidc/logout"
    assert url.params["id_token_hint"] == "idt"
    assert url.params["post_logout_redirect_uri"] == "https://app.example.com/"
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        url = httpx.URL(
            await OIDCClient(make_settings(), http).logout_url("idt", "https://app.example.com/")
        )
    assert url.path == "/v2/logout"
    assert url.params["returnTo"] == "https://app.example.com/"
    assert url.params["client_id"] == "client-1"


async def test_discovery_without_a_required_field_names_it(oidc: OIDCClient) -> None:
    document = {k: v for k, v in DISCOVERY.items() if k != "jwks_uri"}
    with respx.mock(assert_all_called=False) as mock:
        mock.get(f"{DOMAIN}/.well-known/openid-configuration").respond(json=document)
        with pytest.raises(IdentityProviderError, match="jwks_uri") as info:
            await oidc.metadata()
    assert isinstance(info.value.__cause__, KeyError)


async def test_an_unusable_jwks_is_an_idp_error(signing_key: SigningKey, oidc: OIDCClient) -> None:
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        mock.get(f"{DOMAIN}/.well-known/jwks.json").respond(json={"no": "keys"})
        token = signing_key.sign(id_token_claims(ISSUER, "client-1"))
        with pytest.raises(IdentityProviderError, match="JWKS is unusable"):
            await oidc.verify_id_token(token, "n-1")


async def test_no_supported_client_authentication_is_refused(oidc: OIDCClient) -> None:
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [], token_endpoint_auth_methods_supported=["private_key_jwt"])
        token = mock.post(f"{DOMAIN}/oauth/token")
        with pytest.raises(IdentityProviderError, match="neither client_secret_basic"):
            await oidc.refresh_token_grant("rt", sub="auth0|user1")
    assert not token.called


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # A 5xx is an outage even with an OAuth error body: "try again", not "refused".
        (httpx.Response(503, json={"error": "invalid_grant"}), "HTTP 503"),
        # So is a rate limit (Auth0's 429) and RFC 6749's temporarily_unavailable: a
        # login would not help, and for another API's token would loop.
        (httpx.Response(429, json={"error": "too_many_requests"}), "HTTP 429"),
        (httpx.Response(400, json={"error": "temporarily_unavailable"}), "HTTP 400"),
        (httpx.Response(200, json={"id_token": "x"}), "no access token"),
        (httpx.Response(200, json={"access_token": "at"}), "no ID token"),
        (httpx.Response(400, text="<html>"), "HTTP 400"),
    ],
    ids=[
        "5xx-with-error-body",
        "rate-limited",
        "temporarily-unavailable",
        "no-access-token",
        "no-id-token",
        "not-json",
    ],
)
async def test_unusable_token_answers(
    oidc: OIDCClient, response: httpx.Response, expected: str
) -> None:
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [])
        mock.post(f"{DOMAIN}/oauth/token").mock(return_value=response)
        with pytest.raises(IdentityProviderError, match=expected) as info:
            await oidc.refresh_token_grant("rt", sub="auth0|user1")
    assert not isinstance(info.value, TokenEndpointError)


async def test_refresh_token_revocation(oidc: OIDCClient, http: httpx.AsyncClient) -> None:
    # No revocation_endpoint in discovery: nothing is sent.
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [])
        assert await oidc.revoke_refresh_token("rt-1") is False
    # RFC 7009: the token and its type hint, with the client's own authentication.
    revoking = OIDCClient(make_settings(), http)
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [], revocation_endpoint=f"{DOMAIN}/oauth/revoke")
        revoke = mock.post(f"{DOMAIN}/oauth/revoke").respond(200)
        assert await revoking.revoke_refresh_token("rt-1") is True
        form = dict(httpx.QueryParams(revoke.calls.last.request.content.decode()))
        assert form == {"token": "rt-1", "token_type_hint": "refresh_token"}
        assert revoke.calls.last.request.headers["authorization"].startswith("Basic ")
        # Unreachable: the logout goes on, the answer is just "not revoked".
        revoke.mock(side_effect=httpx.ConnectError("refused"))
        assert await revoking.revoke_refresh_token("rt-1") is False


async def test_logout_url_when_the_provider_is_down_or_not_auth0(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with respx.mock(assert_all_called=False) as mock:
        mock.get(f"{DOMAIN}/.well-known/openid-configuration").respond(503)
        down = OIDCClient(make_settings(), http)
        assert await down.logout_url("idt", "https://app.example.com/") == (
            "https://app.example.com/"
        )
    with respx.mock(assert_all_called=False) as mock:
        # An issuer with a path is no Auth0 tenant, and it offers no end_session_endpoint.
        idp(mock, [], issuer=f"{DOMAIN}/realms/x")
        other = OIDCClient(make_settings(domain=f"{DOMAIN}/realms/x"), http)
        mock.get(f"{DOMAIN}/realms/x/.well-known/openid-configuration").respond(
            json={**DISCOVERY, "issuer": f"{DOMAIN}/realms/x"}
        )
        assert await other.logout_url(None, "https://app.example.com/") == (
            "https://app.example.com/"
        )
        # A logout that leaves the provider's session is said once, for the operator.
        await other.logout_url(None, "https://app.example.com/")
    told = [r for r in caplog.records if "no end_session_endpoint" in r.getMessage()]
    assert len(told) == 1 and told[0].levelname == "WARNING"

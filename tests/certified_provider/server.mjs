// An independent, OpenID Certified provider for the integration tests: panva's oidc-provider
// with its development login and consent pages. Configured by the test through env:
// PORT, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, POST_LOGOUT_REDIRECT_URI.
import { generateKeyPair, exportJWK } from "jose";
import Provider from "oidc-provider";

const env = process.env;
const issuer = `http://127.0.0.1:${env.PORT}`;
const { privateKey } = await generateKeyPair("RS256", { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), kid: "test-key", use: "sig", alg: "RS256" };

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: env.CLIENT_ID,
      client_secret: env.CLIENT_SECRET,
      redirect_uris: [env.REDIRECT_URI],
      post_logout_redirect_uris: [env.POST_LOGOUT_REDIRECT_URI],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "client_secret_basic",
    },
  ],
  jwks: { keys: [jwk] },
  pkce: { required: () => true },
  cookies: { keys: [env.CLIENT_SECRET] },
  claims: { openid: ["sub"], email: ["email", "email_verified"], profile: ["name"] },
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return { sub, email: `${sub}@example.com`, email_verified: true, name: sub };
      },
    };
  },
});
provider.listen(Number(env.PORT), "127.0.0.1", () => console.log(`ready ${issuer}`));

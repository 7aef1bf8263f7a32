// nextjs-auth0 v4 reading or writing a session cookie, as a Next.js app behind the sidecar
// does: `node session.mjs read|write` with a JSON request on stdin, a JSON answer on stdout.
//   read:  {"cookie": "<Cookie header>"}     -> the session auth0.getSession() returns (or null)
//   write: {"session": {...}}                -> the Set-Cookie headers nextjs-auth0 writes for it
import { Auth0Client } from "@auth0/nextjs-auth0/server";
import { generateSessionCookie } from "@auth0/nextjs-auth0/testing";
import { NextRequest, NextResponse } from "next/server.js";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const input = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const appBaseUrl = process.env.APP_BASE_URL;
const auth0 = new Auth0Client({
  domain: process.env.AUTH0_DOMAIN,
  clientId: "interop",
  clientSecret: "interop-secret",
  secret: process.env.AUTH0_SECRET,
  appBaseUrl,
});

if (process.argv[2] === "read") {
  const request = new NextRequest(appBaseUrl, { headers: { cookie: input.cookie } });
  console.log(JSON.stringify(await auth0.getSession(request)));
} else {
  // updateSession needs a session to update: start from a small one with the same internals,
  // then let nextjs-auth0's session store write the real one (chunked when it is big).
  const seed = await generateSessionCookie(
    { user: { sub: input.session.user.sub }, tokenSet: input.session.tokenSet, internal: input.session.internal },
    { secret: process.env.AUTH0_SECRET },
  );
  const request = new NextRequest(appBaseUrl, { headers: { cookie: `__session=${seed}` } });
  const response = NextResponse.next();
  await auth0.updateSession(request, response, input.session);
  console.log(JSON.stringify(response.headers.getSetCookie()));
}

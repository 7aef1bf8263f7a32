// Next 16 calls this "proxy" (Next 15 and before: middleware.js exporting `middleware`).
// auth0.middleware rolls the session on every request; the sidecar in front owns /auth/*
// and /consent, so the app never sees a login or a terms page of its own.
import { auth0 } from "./lib/auth0";

export async function proxy(request) {
  return await auth0.middleware(request);
}

export const config = {
  matcher: ["/((?!_next/static|_next/image|favicon.ico).*)"],
};

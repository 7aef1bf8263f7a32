// The same AUTH0_SECRET as the sidecar: nextjs-auth0 reads the session cookie the sidecar
// writes (nextjs-auth0 v4's own __session format), and rolls it like its own.
import { Auth0Client } from "@auth0/nextjs-auth0/server";

export const auth0 = new Auth0Client();

import { auth0 } from "../lib/auth0";

// Per request: the session is the user's, never a page built ahead of time.
export const dynamic = "force-dynamic";

const CLAIM = process.env.CONSENT_CLAIM ?? "https://consent.example.com/consent";

export default async function Home() {
  const session = await auth0.getSession();
  if (!session) {
    // The sidecar lets no one here without a session: this is only for running it alone.
    return <p id="anonymous">Not signed in.</p>;
  }
  const consent = session.user[CLAIM];
  return (
    <main>
      <h1>Hello from Next.js</h1>
      <p id="user">{session.user.email ?? session.user.sub}</p>
      <p id="consent">
        {consent?.given ? `consented to version ${consent.version}` : "no consent"}
      </p>
      <p>
        <a href="/consent/withdraw">Withdraw consent</a> · <a href="/auth/logout">Log out</a>
      </p>
    </main>
  );
}

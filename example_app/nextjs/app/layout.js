export const metadata = { title: "Next.js behind consent-sidecar" };

export default function RootLayout({ children }) {
  return (
    <html lang="en">
      <body style={{ fontFamily: "system-ui", maxWidth: "40rem", margin: "2rem auto" }}>
        {children}
      </body>
    </html>
  );
}

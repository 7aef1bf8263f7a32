"""How the tests start Debian's Chromium: no sandbox (root in CI), and nothing that would
reach the network on its own (this machine has none but loopback)."""

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]

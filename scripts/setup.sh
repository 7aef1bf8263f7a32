# Sourced by the other scripts: a project-local virtualenv with the given extras.
# Usage: . scripts/setup.sh EXTRAS
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
echo "Installing Python packages into .venv ..."
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$1]" 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true

apt_install() {
  # Debian packages the project needs that pip cannot provide (Chromium, Node.js).
  # Each argument is CHECK:PACKAGE; CHECK is a command on PATH, or a glob of a file the
  # package installs where PATH does not reach (PostgreSQL's /usr/lib/postgresql/*/bin).
  local missing=()
  for pair in "$@"; do
    local check="${pair%%:*}"
    if [[ "$check" == /* ]]; then
      compgen -G "$check" >/dev/null || missing+=("${pair##*:}")
    else
      command -v "$check" >/dev/null 2>&1 || missing+=("${pair##*:}")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "Installing Debian packages: ${missing[*]} ..."
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

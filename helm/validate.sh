#!/usr/bin/env bash
# Render the Helm chart and validate it (see validate.py for what is checked).
#
#   bash helm/validate.sh            # from the repository root, or anywhere
#
# Needs python3 (>= 3.10) and cargo. Installs its Python toolchain
# (helm/requirements.txt: helm-python-sdk renders with Helm's Go SDK, no helm
# binary; kubernetes-validate ships the Kubernetes OpenAPI schemas) into a
# venv under $VESTIBULE_HELM_CACHE (default ~/.cache/vestibule-helm), reused
# while requirements.txt is unchanged. Set VESTIBULE_OPERATOR to an already
# built vestibule-operator binary to skip `cargo run`.
# Exit status: 0 when everything passes, 1 on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cache="${VESTIBULE_HELM_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/vestibule-helm}"
venv="$cache/venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "validate.sh: needs python3 >= 3.10 (set PYTHON=...)" >&2
  exit 1
fi

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "validate.sh: installing the chart toolchain into $venv"
  rm -rf "$venv"
  mkdir -p "$cache"
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    # Debian's python3 splits venv (and ensurepip) into its own package.
    if command -v apt-get >/dev/null 2>&1; then
      export DEBIAN_FRONTEND=noninteractive
      pyver="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
      apt-get update -qq
      apt-get install -y -qq "python${pyver}-venv" >/dev/null || apt-get install -y -qq python3-venv >/dev/null
    fi
    rm -rf "$venv"
    "$python" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input -r "$here/requirements.txt"
  echo "$want" > "$stamp"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if [ -n "${VESTIBULE_OPERATOR:-}" ]; then
  "$VESTIBULE_OPERATOR" crd > "$tmp/crd.yaml"
  "$VESTIBULE_OPERATOR" crd acmeissuer > "$tmp/acme-crd.yaml"
else
  (cd "$repo" && cargo run --locked -q -p vestibule-operator -- crd) > "$tmp/crd.yaml"
  (cd "$repo" && cargo run --locked -q -p vestibule-operator -- crd acmeissuer) > "$tmp/acme-crd.yaml"
fi

exec "$venv/bin/python" "$here/validate.py" --crd-from "$tmp/crd.yaml" --acme-crd-from "$tmp/acme-crd.yaml" "$@"

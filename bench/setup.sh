#!/usr/bin/env bash
# Installs what the bench's `quix` scenario needs: Quix Streams (Python, from PyPI) in a
# virtualenv at bench/.venv. Idempotent; the bench runs it itself when the venv is missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
version="3.28.1"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import quixstreams, sys; sys.exit(quixstreams.__version__ != '$version')" 2>/dev/null; then
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "quixstreams==$version"
"$venv/bin/python" -c "import quixstreams; print('quixstreams', quixstreams.__version__, 'installed in $venv')"

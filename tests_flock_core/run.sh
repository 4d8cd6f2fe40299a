#!/usr/bin/env bash
# Runs the flock-core plugin tests in their own Python 3.12 virtualenv (.venv-flock-core).
# Skips with a visible message only when no Python 3.12 interpreter can be found.
set -euo pipefail
cd "$(dirname "$0")/.."
python312=""
for candidate in python3.12 "$(command -v pyenv >/dev/null 2>&1 && pyenv root)"/versions/3.12*/bin/python \
                 /root/.pyenv/versions/3.12*/bin/python /usr/bin/python3.12 /usr/local/bin/python3.12; do
  if [ -n "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
    python312="$candidate"
    break
  fi
done
if [ -z "$python312" ]; then
  echo "SKIPPED: flock-core plugin tests: no Python 3.12 interpreter found (flock-core needs >= 3.12)"
  exit 0
fi
venv=.venv-flock-core
if [ ! -f "$venv/.installed" ] || [ pyproject.toml -nt "$venv/.installed" ]; then
  "$python312" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e '.[flock]' 'respx>=0.23,<0.24' 'pytest>=8.3,<10' 'pytest-asyncio>=1.0,<2'
  touch "$venv/.installed"
fi
"$venv/bin/python" -m pytest -q -p no:cacheprovider -c tests_flock_core/pytest.ini tests_flock_core

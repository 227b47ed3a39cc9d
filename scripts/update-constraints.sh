#!/usr/bin/env bash
# Refresh constraints.txt, the exact versions the test suite passed with: a fresh venv gets the newest versions
# that pyproject.toml's ranges allow (package and test extra), the README's tests run on them, and only if they
# pass are the versions frozen. Run it from anywhere:  bash scripts/update-constraints.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
. "$tmp/venv/bin/activate"
python -m pip install -q -e ".[test]"
python -m pytest
{
    echo "# The exact versions the test suite last passed with (Python $(python -c 'import sys; print(*sys.version_info[:2], sep=".")'), $(date -u +%Y-%m-%d))."
    echo "# Used as: pip install -e \".[test]\" -c constraints.txt  (README, .ci/run). pyproject.toml keeps the ranges."
    echo "# Refresh with: bash scripts/update-constraints.sh  (fresh venv, newest allowed versions, tests, freeze)."
    python -m pip freeze --exclude-editable | sed -E 's/^([A-Za-z0-9_.-]+==[^+]+)\+.*$/\1/'  # torch 2.13.0+cpu -> 2.13.0
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) packages"

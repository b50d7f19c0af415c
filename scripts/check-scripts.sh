#!/usr/bin/env bash
# Checks of the scripts themselves (a step of scripts/test.sh):
#
#   scripts/check-scripts.sh
#
# * shellcheck on scripts/*.sh and scripts/lib/*.sh: no finding of any severity
#   (installs Debian's shellcheck when it is missing);
# * the unit tests of the scripts' Python helpers (scripts/lib/test_*.py), e.g. that
#   vm2vm.sh's JSON and CSV stay valid for any --label and that its drop counts take the
#   reasons from pvnet's own statistics.
#
# Exit status: 0 pass; 1 a finding or a failed test; 77 SKIP (shellcheck or python3 cannot
# be installed here; a "SKIP:" line says which), when nothing failed.
set -uo pipefail
# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"
cd "$PVNET_ROOT" || exit 1

failed=0 skipped=0
if command -v shellcheck >/dev/null || { ensure_pkgs shellcheck && command -v shellcheck >/dev/null; }; then
  log "shellcheck $(shellcheck --version | awk '/^version:/ {print $2}'): scripts/*.sh scripts/lib/*.sh"
  shellcheck scripts/*.sh scripts/lib/*.sh || failed=1
else
  echo "SKIP: shellcheck cannot be installed here (Debian package shellcheck)"
  skipped=1
fi
if command -v python3 >/dev/null || { ensure_pkgs python3 && command -v python3 >/dev/null; }; then
  log "python3 -m unittest: scripts/lib/test_*.py"
  PYTHONDONTWRITEBYTECODE=1 python3 -m unittest discover -s scripts/lib -p 'test_*.py' || failed=1
else
  echo "SKIP: python3 cannot be installed here"
  skipped=1
fi
if [ "$failed" = 1 ]; then exit 1; fi
if [ "$skipped" = 1 ]; then exit "$PVNET_SKIP_RC"; fi
echo "PASS: scripts: shellcheck clean, helper tests pass"

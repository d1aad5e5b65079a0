# Sourced by scripts/serve and scripts/test: create .venv and install voxgate into it (idempotent).
#
# torch first: on our machines `pip install torch==2.13.0` takes a local CPU build, while any looser
# torch requirement (ours included) would pull several GB of CUDA wheels when no torch is installed.
# With torch present (a CUDA build you installed yourself, e.g. via VOXGATE_PYTHON pointing at a venv
# that has it), nothing is reinstalled: pyproject declares a range that 2.13.0 satisfies.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VOXGATE_VENV:-$ROOT/.venv}"
EXTRAS="${1:-}"

if [ -n "${VOXGATE_PYTHON:-}" ]; then
  PY="$VOXGATE_PYTHON"
else
  BASE_PY="$(command -v python3.11 || command -v python3)"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "voxgate: creating $VENV with $BASE_PY" >&2
    "$BASE_PY" -m venv "$VENV"
  fi
  PY="$VENV/bin/python"
fi

STAMP="$VENV/.voxgate-installed${EXTRAS:+-$EXTRAS}"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
# Installed already when any stamp of this pyproject.toml covers the wanted extras: scripts/test
# installs [test], which includes everything scripts/serve needs, so serve must not reinstall.
installed() {
  local stamp have extra
  for stamp in "$VENV"/.voxgate-installed "$VENV"/.voxgate-installed-*; do
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$WANT" ] || continue
    have="${stamp##*/.voxgate-installed}"
    have=",${have#-},"
    for extra in ${EXTRAS//,/ }; do
      [[ "$have" == *",$extra,"* ]] || continue 2
    done
    return 0
  done
  return 1
}
if ! installed; then
  "$PY" -m pip install --quiet --upgrade pip
  if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "voxgate: installing torch==2.13.0 (CPU build)" >&2
    "$PY" -m pip install --quiet "torch==2.13.0"
  fi
  echo "voxgate: installing voxgate${EXTRAS:+[$EXTRAS]} and its dependencies" >&2
  "$PY" -m pip install --quiet -e "$ROOT${EXTRAS:+[$EXTRAS]}"
  mkdir -p "$(dirname "$STAMP")" && echo "$WANT" > "$STAMP"
fi

# glibc malloc maps and unmaps the decoder's large buffers on every call (page-fault storms; batches
# ran at a third of the speed): tcmalloc keeps them. Debian: libtcmalloc-minimal4.
find_tcmalloc() { ls /usr/lib/*/libtcmalloc_minimal.so.4 /usr/lib/libtcmalloc_minimal.so.4 2>/dev/null | head -n1 || true; }
TCMALLOC="$(find_tcmalloc)"
if [ -z "$TCMALLOC" ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null && [ -z "${VOXGATE_NO_APT:-}" ]; then
  echo "voxgate: installing libtcmalloc-minimal4 (faster CPU inference)" >&2
  (apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1; }) || true
  TCMALLOC="$(find_tcmalloc)"
fi
if [ -n "$TCMALLOC" ]; then
  export LD_PRELOAD="$TCMALLOC${LD_PRELOAD:+:$LD_PRELOAD}"
  export TCMALLOC_RELEASE_RATE=0
fi
export PY

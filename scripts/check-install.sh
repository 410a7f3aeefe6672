#!/usr/bin/env bash
# What a newcomer does first: `pip install` the package WITHOUT extras into a fresh
# virtualenv, then run the CLI and type-check their own code against it. Run by CI
# (.ci/run) after `make setup`; about 30 s with a warm pip cache. Fails loudly.
#
#   scripts/check-install.sh            # PYTHON=python3.12 to use another interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
PYTHON=${PYTHON:-python3}

work=$(mktemp -d "${TMPDIR:-/tmp}/cachebus-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
venv="$work/venv"

step() { echo "check-install: $*" >&2; }
fail() { echo "check-install: FAILED: $*" >&2; exit 1; }

step "fresh venv ($($PYTHON --version 2>&1)) in $venv"
$PYTHON -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

step "pip install $repo (no extras, not editable)"
# hatchling builds the wheel in a temporary directory: nothing is written to the checkout.
"${pip[@]}" install "$repo"

# Run from an empty directory: nothing may come from the checkout.
mkdir "$work/run"
cd "$work/run"
cachebus="$venv/bin/cachebus"
py="$venv/bin/python"

for extra in faust aiokafka structlog orjson jsonschema_rs prometheus_client tqdm; do
  if "$py" -c "import $extra" 2>/dev/null; then
    fail "'$extra' is installed without the worker extra"
  fi
done

run() {  # run CMD...: must exit 0 without a traceback
  local out
  if ! out=$("$@" 2>&1); then
    echo "$out" >&2
    fail "$* exited non-zero"
  fi
  if grep -q Traceback <<<"$out"; then
    echo "$out" >&2
    fail "$* printed a traceback"
  fi
  printf '%s\n' "$out"
}

expect() {  # expect TEXT CMD...: CMD exits 0, no traceback, its output contains TEXT
  local text=$1 out
  shift
  out=$(run "$@")
  [[ $out == *"$text"* ]] || { echo "$out" >&2; fail "$* did not print '$text'"; }
}

step "cachebus --help, --version, stats --help, ..."
expect "usage: cachebus" "$cachebus" --help
version=$(run "$cachebus" --version)
[[ $version =~ ^cachebus\ [0-9] ]] || fail "cachebus --version printed '$version'"
for command in stats verify warm acl gc publish replay worker "audit tail"; do
  # shellcheck disable=SC2086
  expect "usage: cachebus" "$cachebus" $command --help
done
expect "~check:*" "$cachebus" acl --nopass --prefix check

step "worker commands name the extra to install"
if err=$("$cachebus" publish events.jsonl 2>&1); then
  fail "cachebus publish without the worker extra exited 0"
fi
[[ $(wc -l <<<"$err") -eq 1 && $err == *"pip install 'cachebus[worker]'"* ]] ||
  fail "cachebus publish without the worker extra printed: $err"

step "python -c 'import cachebus'"
run "$py" -c "import cachebus, sys; assert cachebus.__file__.startswith(sys.prefix), cachebus.__file__"

step "integrations without their extras: one line naming the extra"
for pair in langchain:langchain llamaindex:llamaindex embedders_openai:openai \
  embedders_st:sentence-transformers; do
  module=${pair%%:*} extra=${pair#*:}
  case $module in
    embedders_*) dotted="cachebus.$module" ;;
    *) dotted="cachebus.integrations.$module" ;;
  esac
  if err=$("$py" -c "import $dotted" 2>&1); then
    fail "import $dotted without the $extra extra succeeded"
  fi
  [[ $err == *"pip install 'cachebus[$extra]'"* ]] ||
    fail "import $dotted without the $extra extra printed: $err"
done

step "the wheel carries no test or demo infrastructure, no invalid schema examples"
site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# Only the production packages: test and development infrastructure lives in devtools/,
# which is not packaged (nor are tests/, bench/, soak/, consistency/).
stray=$("$py" - <<'PY'
from importlib.metadata import files
allowed = ("cachebus/", "worker/", "cachebus-", "../")  # the packages, dist-info, bin/cachebus
print("\n".join(str(f) for f in files("cachebus") or () if not str(f).startswith(allowed)))
PY
)
[[ -z $stray ]] || fail "the wheel installs files outside cachebus/ and worker/: $stray"
for path in devtools cachebus/testing.py worker/testing.py worker/stack.py worker/demo.py; do
  [[ ! -e "$site/$path" ]] || fail "$path is installed"
done
[[ -f "$site/cachebus/py.typed" ]] || fail "cachebus/py.typed is not installed"
[[ -f "$site/worker/schemas/document-event.schema.json" ]] || fail "schemas not installed"
if [[ -n $(find "$site/worker/schemas" -path '*/invalid/*') ]]; then
  fail "invalid schema examples are installed"
fi

step "mypy --strict on a user's file against the installed package"
"${pip[@]}" install mypy
cp "$repo/tests/typing/user_code.py" "$work/run/user_code.py"
run "$venv/bin/mypy" --strict --no-incremental --python-executable "$py" user_code.py

step "ok"

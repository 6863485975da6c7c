#!/usr/bin/env bash
# The whole test suite: unit, integration, golden-vector, Wycheproof, CLI and doc tests with
# every feature, plus the AWS backend against moto (a real KMS/STS emulator), which this script
# installs (into target/moto-venv, once) and starts on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

MOTO_VERSION=5.2.5
venv=target/moto-venv
if ! "$venv/bin/python" -c "import moto, flask" >/dev/null 2>&1; then
  echo "installing moto[server]==$MOTO_VERSION into $venv" >&2
  mkdir -p target
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian's system python needs python3-venv for ensurepip.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$venv"
    else
      echo "error: python3 -m venv failed (install python3-venv)" >&2
      exit 1
    fi
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi

port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$venv/bin/python" -m moto.server -H 127.0.0.1 -p "$port" >target/moto.log 2>&1 &
moto_pid=$!
trap 'kill $moto_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if "$venv/bin/python" -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
    break
  fi
  sleep 0.2
done
export CMEK_TEST_MOTO_URL="http://127.0.0.1:$port"
export CMEK_REQUIRE_EMULATORS=1

cargo test --all-features --locked "$@"

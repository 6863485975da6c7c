#!/usr/bin/env bash
# The whole test suite: unit, integration, golden-vector, Wycheproof, CLI and doc tests with
# every feature, plus the cloud backends against third-party emulators this script installs
# (into target/emulators, once) and starts on 127.0.0.1: moto (AWS KMS, STS and S3), drongo
# (Google Cloud KMS REST) and Azurite (Azure Blob, from npm), and a throwaway PostgreSQL
# cluster. The in-process fakes of the testkit need nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/emulators
packages=("moto[server]==5.2.5" "drongo==0.8.0" "google-crc32c" "cryptography==50.0.2")
if ! "$venv/bin/python" -c "import moto, flask, drongo, cryptography.cobblestone" >/dev/null 2>&1; then
  echo "installing ${packages[*]} into $venv" >&2
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
  "$venv/bin/pip" install -q --disable-pip-version-check "${packages[@]}"
fi

node_dir=target/emulators/node
azurite=azurite@3.37.0
if [ ! -x "$node_dir/node_modules/.bin/azurite-blob" ]; then
  echo "installing $azurite into $node_dir" >&2
  mkdir -p "$node_dir"
  npm install --prefix "$node_dir" --no-audit --no-fund --loglevel=error "$azurite" >&2
fi

# PostgreSQL (Debian's postgresql-15): a throwaway cluster of our own, stopped at the end.
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  else
    echo "error: no PostgreSQL server binaries (install postgresql-15)" >&2
    exit 1
  fi
fi
pg_dir=$(mktemp -d /tmp/cmek-pg.XXXXXX)
as_pg() {
  # initdb and postgres refuse to run as root.
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
# TLS with a throwaway authority (tests/postgres/tls.rs); plain connections stay allowed.
mkdir "$pg_dir/tls"
"$venv/bin/python" scripts/pg_tls.py "$pg_dir/tls"
[ "$(id -u)" = 0 ] && chown -R postgres: "$pg_dir"
as_pg "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U postgres --no-sync >"$pg_dir/initdb.log"

pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$pg_dir"
}
trap cleanup EXIT
free_port() {
  "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_for() {
  for _ in $(seq 1 150); do
    if "$venv/bin/python" -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  echo "error: nothing listens on 127.0.0.1:$1" >&2
  return 1
}

moto_port=$(free_port)
"$venv/bin/python" -m moto.server -H 127.0.0.1 -p "$moto_port" >target/moto.log 2>&1 &
pids+=($!)
drongo_port=$(free_port)
"$venv/bin/drongo" server --host 127.0.0.1 --port "$drongo_port" >target/drongo.log 2>&1 &
pids+=($!)
azurite_port=$(free_port)
"$node_dir/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$azurite_port" \
  --inMemoryPersistence --skipApiVersionCheck --loose --disableTelemetry --silent \
  >target/azurite.log 2>&1 &
pids+=($!)
pg_port=$(free_port)
as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -o \
  "-c listen_addresses=127.0.0.1 -p $pg_port -k $pg_dir -c fsync=off -c max_connections=300 -c ssl=on -c ssl_cert_file=$pg_dir/tls/server.crt -c ssl_key_file=$pg_dir/tls/server.key" \
  start >/dev/null
wait_for "$moto_port"
wait_for "$drongo_port"
wait_for "$azurite_port"

export CMEK_TEST_MOTO_URL="http://127.0.0.1:$moto_port"
export CMEK_TEST_DRONGO_URL="http://127.0.0.1:$drongo_port"
# object_store's Azure client finds Azurite here (with_use_emulator).
export AZURITE_BLOB_STORAGE_URL="http://127.0.0.1:$azurite_port"
export CMEK_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
export CMEK_TEST_POSTGRES_CA="$pg_dir/tls/ca.pem"
export CMEK_REQUIRE_EMULATORS=1
# An independent Cobblestone implementation (pyca/cryptography) for tests/cobblestone.rs.
export CMEK_TEST_PYTHON="$PWD/$venv/bin/python"

# The unit tests once more without the cloud features: what a default build says when a
# configuration needs a provider it was built without.
cargo test --lib --locked "$@"
cargo test --all-features --locked "$@"
# The example's whole customer-managed-key life cycle, end to end (it asserts as it goes).
cargo run --all-features --locked --quiet --example storage_service >/dev/null

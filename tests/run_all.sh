#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every suite.
#   1. the package (Rust extension built by maturin) and the CLI, with the test extras, and the
#      Python client (clients/python, pure Python) with its crypto and msgpack extras
#   2. the reference engine's chroot (interop tests against the published wse-client), promtool,
#      redis-server
#   3. cargo test for the Rust units (engine and load generator)
#   4. the TypeScript client (clients/ts): Node >= 20, its npm packages (npm ci), Debian's
#      chromium for its browser tests; then its unit tests (vitest)
#   5. pytest: engine suites with real clients, Autobahn|Testsuite 1-10, stubs and types, the
#      TypeScript client end to end in Chromium and Node (tests/ts)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests need; waits for another apt/dpkg to finish instead of failing on its lock.
apt_install() {
    apt-get -o DPkg::Lock::Timeout=600 update -q
    apt-get -o DPkg::Lock::Timeout=600 install -y -q "$@"
}
# A new venv ships pip 23.2, whose resolver cannot satisfy wse-cli's dependency on the
# wse-engine being installed beside it: bring pip up to date first.
python3 -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
python3 -m pip install -q --disable-pip-version-check -e ".[test]" ./cli -e "./clients/python[crypto,msgpack]"
bash tests/setup_reference.sh
# promtool (Debian's prometheus package) checks the cluster's /metrics and the alert rules.
if ! command -v promtool >/dev/null; then
    apt_install prometheus
fi
# redis-server and redis-cli (Debian's redis-server package): the Redis bridge's tests start
# their own servers and a Redis Cluster on free loopback ports (never the system service).
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    apt_install redis-server
fi
# libfaketime moves the server's wall clock in the clock-jump fault test.
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ] || apt_install libfaketime
# The TypeScript client: node/npm (Node >= 20), its packages, and Chromium for tests/ts.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm
fi
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
    || echo "run_all: node $(node --version) is older than 20: the TypeScript client's tests will fail" >&2
if ! command -v chromium >/dev/null; then
    apt_install chromium
fi
(cd clients/ts && npm ci --no-audit --no-fund --loglevel=error && npm test --silent)
cargo test --workspace --no-default-features -q
python3 -m pytest -q "$@"

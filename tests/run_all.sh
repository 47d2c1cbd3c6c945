#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every suite.
#   1. the package (Rust extension built by maturin, the `wse` command with it) with the test
#      extras, the Python client (clients/python, pure Python) with its crypto and msgpack extras,
#      and the load generator (bench/loadgen: the `wse-loadgen` executable behind `wse bench`)
#   2. the reference engine's chroot (interop tests against the published wse-client, and the
#      wheel's check on Python 3.13), promtool, redis-server, libfaketime
#   3. the TypeScript client (clients/ts): Node >= 20, its npm packages (npm ci), Debian's
#      chromium for its browser tests, React 18 for the hooks' tests (clients/ts/test-react18,
#      its own npm ci); then its unit tests (vitest)
#   4. cargo test for the Rust units (engine and load generator)
#   5. the fuzz targets (fuzz/run.sh check): every committed corpus replayed, then about a minute
#      of coverage-guided fuzzing in all (FUZZ_SECONDS; 0 replays only)
#   6. the wheel (`maturin build --release`, from the release build of step 1), installed into
#      the chroot's Python 3.13 without a Rust toolchain, and a subset of the suites run there
#   7. pytest: engine suites with real clients, Autobahn|Testsuite 1-13 (with
#      permessage-deflate), stubs and types, the
#      TypeScript client end to end in Chromium and Node (tests/ts)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests need; waits for another apt/dpkg to finish instead of failing on its lock.
apt_install() {
    apt-get -o DPkg::Lock::Timeout=600 update -q
    apt-get -o DPkg::Lock::Timeout=600 install -y -q "$@"
}
# A new venv ships pip 23.2; bring it up to date first (its resolver mishandled local
# distributions that depend on each other), with maturin for step 5.
python3 -m pip install -q --disable-pip-version-check --upgrade "pip>=24" "maturin>=1.7,<2"
# The Rust build takes minutes: -v lets cargo's progress through instead of minutes of silence.
# The load generator is its own package (`wse bench` and the bench-suite tests run it).
python3 -m pip install -v --disable-pip-version-check -e ".[test]" -e "./clients/python[crypto,msgpack]" ./bench/loadgen
bash tests/setup_reference.sh
# promtool (Debian's prometheus package) checks /metrics scrapes and the alert rules.
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
# React 18 for the hooks' tests: a project of its own (20 packages) whose react, react-dom and
# @testing-library/react are 18; tests/ts/test_ts_react.py runs them (npm run test:react18)
# with the engine, and the engine test under React 19.
npm --prefix clients/ts/test-react18 ci --no-audit --no-fund --loglevel=error
# The fuzz targets link libFuzzer, which is C++ (built by the libfuzzer-sys crate).
command -v c++ >/dev/null || apt_install g++
cargo test --workspace --no-default-features -q
bash fuzz/run.sh check "${FUZZ_SECONDS:-60}"
rm -rf target/ci-wheels
python3 -m maturin build --release --out target/ci-wheels
bash tests/wheel_check.sh target/ci-wheels/wse_engine-*.whl
python3 -m pytest -q "$@"

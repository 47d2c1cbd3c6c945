#!/usr/bin/env bash
# The built wheel on another Python, without a Rust toolchain: installs WHEEL into a fresh venv
# of the reference chroot's Python 3.13 (Debian trixie, built by tests/setup_reference.sh; it has
# no cargo or rustc), with the Python client from clients/python, and runs a subset of the
# suites there against the installed package: serve and connect, JWT, subscribe and publish,
# a cluster of two workers with /metrics, the CLI, the Python client.
#
#   bash tests/wheel_check.sh target/wheels/wse_engine-*.whl [pytest args...]
#
# The tests run from a copy of tests/ with no `wse` package beside it, so `import wse` can only
# find the wheel's. Python 3.14 too, when the chroot's Debian offers python3.14 (trixie does not).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
wheel=$(readlink -f "$1")
shift
script="$here/../shared/tools/reference-wse.sh"
[ -f "$script" ] || { echo "wheel_check: $script not found" >&2; exit 2; }
root=$(bash "$script" root)
[ -x "$root/usr/bin/python3" ] || { echo "wheel_check: no chroot at $root (run tests/setup_reference.sh)" >&2; exit 2; }
mountpoint -q "$root/proc" || mount --bind /proc "$root/proc"
mountpoint -q "$root/dev" || mount --bind /dev "$root/dev"

work=/tmp/wse-wheel-check
rm -rf "$root$work"
mkdir -p "$root$work"
cp "$wheel" "$root$work/"
cp -r "$here/tests" "$root$work/tests"
cp -r "$here/clients" "$root$work/clients"
find "$root$work" -name __pycache__ -prune -exec rm -rf {} +
# promtool (the host's; it needs only libc) for the tests that check a scrape with it.
if command -v promtool >/dev/null; then install -m 755 "$(command -v promtool)" "$root/usr/local/bin/promtool"; fi
cat > "$root$work/pytest.ini" <<'EOF'
[pytest]
timeout = 300
filterwarnings =
    error
    ignore::DeprecationWarning:websockets.*
EOF

SUBSET=(
    tests/test_smoke.py
    "tests/test_auth.py::test_bearer_token_passes_all_claims_when_none_configured"
    "tests/test_auth.py::test_expired_beyond_leeway"
    "tests/test_auth.py::test_rs256_accepted"
    "tests/test_fanout.py::test_two_interleaved_topics_keep_their_order"
    "tests/test_cluster.py::test_publication_on_one_worker_reaches_subscribers_on_all_in_order"
    "tests/test_cluster.py::test_http_publish_reaches_every_worker_and_needs_the_token"
    "tests/test_metrics_export.py::test_app_serve_metrics_exports_every_engine_counter"
    "tests/test_metrics_export.py::test_engine_log_lines_reach_python_logging"
    "tests/test_cli_options.py::test_version"
    "tests/test_cli_options.py::test_options_come_from_the_environment"
    "tests/client/test_client_core.py::test_seed_snippet_verbatim"
    "tests/client/test_client_core.py::test_send_request_and_handlers"
    "tests/client/test_client_core.py::test_subscribe_acks_and_unsubscribe"
)
DEPS="pytest pytest-timeout websockets picows pyjwt[crypto] cryptography msgpack"

for py in python3.13 python3.14; do
    if [ ! -x "$root/usr/bin/$py" ]; then
        echo "wheel_check: $py is not in the chroot's Debian; skipped"
        continue
    fi
    venv=/opt/wse-wheel-$py
    chroot "$root" /bin/bash -euc "
        if command -v cargo || command -v rustc; then echo 'a Rust toolchain is in the chroot' >&2; exit 1; fi
        test -x $venv/bin/python || $py -m venv $venv
        $venv/bin/pip install -q --disable-pip-version-check --upgrade 'pip>=24'
        $venv/bin/pip install -q --disable-pip-version-check --force-reinstall $work/$(basename "$wheel")
        $venv/bin/pip install -q --disable-pip-version-check $DEPS '$work/clients/python[crypto,msgpack]'
        cd $work
        $venv/bin/python -c 'import sys, wse, wse._runtime as r; assert wse.__file__.startswith(\"$venv\"), wse.__file__; print(\"wheel_check:\", sys.version.split()[0], \"wse\", wse.__version__, \"from\", wse.__file__)'
        $venv/bin/wse --version
        PATH=$venv/bin:\$PATH $venv/bin/python -m pytest -q -p no:cacheprovider ${SUBSET[*]} $*
    "
done

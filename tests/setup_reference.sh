#!/usr/bin/env bash
# Builds the reference engine's chroot (wse-server/wse-client 2.5.1, Python 3.13) used by the
# interop tests and the benchmarks. Idempotent. Where TLS to the package index is intercepted
# by a local CA, the chroot's pip needs the host's CA bundle: the first setup attempt then fails
# at pip, we copy the bundle in, and the second attempt finishes.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
script="$here/../shared/tools/reference-wse.sh"
[ -f "$script" ] || { echo "setup_reference: $script not found" >&2; exit 2; }
root=$(bash "$script" root)
if [ -x "$root/opt/ref/bin/python" ] && chroot "$root" /opt/ref/bin/python -c "import wse_client, wse_server" 2>/dev/null; then
  echo "reference chroot ready"
  exit 0
fi
if ! bash "$script" setup; then
  mkdir -p "$root/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  bash "$script" setup
fi

#!/usr/bin/env bash
# Installs what the local stack and the tests need beyond the Rust toolchain, pinned, into the
# project's own folder: moto's server mode (the SQS emulator) in .local/venv.
#
# Idempotent: nothing is installed when the pinned version is already there.
set -euo pipefail

MOTO_VERSION="5.2.5"

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "${script_dir}/.." && pwd -P)"
venv="${repo_root}/.local/venv"
python="${PYTHON:-python3}"

log() { printf '[install-local-tools] %s\n' "$*" >&2; }

installed="$("${venv}/bin/python" -c 'from importlib import metadata; print(metadata.version("moto"))' 2>/dev/null || true)"
if [[ "${installed}" == "${MOTO_VERSION}" && -x "${venv}/bin/moto_server" ]]; then
    log "moto ${MOTO_VERSION} already installed"
    exit 0
fi

log "installing moto[server]==${MOTO_VERSION} into ${venv}"
rm -rf "${venv}"
"${python}" -m venv "${venv}"
"${venv}/bin/python" -m pip install --quiet --disable-pip-version-check "moto[server]==${MOTO_VERSION}"
log "done"

#!/usr/bin/env bash
# Installs what the local stack and the tests need beyond the Rust toolchain, pinned, into the
# project's own folder: moto's server mode (the SQS emulator) in .local/venv, and Schemathesis
# (the OpenAPI conformance check, scripts/api-check.sh) in .local/venv-schemathesis.
#
#   scripts/install-local-tools.sh [moto] [schemathesis]     (no argument: both)
#
# Idempotent: nothing is installed when the pinned version is already there. pip prints a line
# per package it collects and installs (about a minute for moto on a fresh machine).
set -euo pipefail

MOTO_VERSION="5.2.5"
SCHEMATHESIS_VERSION="4.32.5"

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "${script_dir}/.." && pwd -P)"
python="${PYTHON:-python3}"

log() { printf '[install-local-tools] %s\n' "$*" >&2; }

# Installs `package`==`version` (pip requirement `spec`) into the virtualenv `venv`, anew,
# unless that version and the executable `bin` are already there.
install() {
    local venv="$1" package="$2" version="$3" spec="$4" bin="$5" installed
    installed="$("${venv}/bin/python" -c "from importlib import metadata; print(metadata.version('${package}'))" 2>/dev/null || true)"
    if [[ "${installed}" == "${version}" && -x "${venv}/bin/${bin}" ]]; then
        log "${package} ${version} already installed"
        return 0
    fi
    log "installing ${spec} into ${venv}"
    rm -rf "${venv}"
    "${python}" -m venv "${venv}"
    "${venv}/bin/python" -m pip install --disable-pip-version-check --progress-bar off "${spec}" \
        | grep -E '^(Collecting|Installing|Successfully)' >&2 || true
    [[ -x "${venv}/bin/${bin}" ]] || { log "pip did not install ${spec}"; exit 1; }
    log "done"
}

tools=("$@")
[[ ${#tools[@]} -gt 0 ]] || tools=(moto schemathesis)
for tool in "${tools[@]}"; do
    case "${tool}" in
    moto) install "${repo_root}/.local/venv" moto "${MOTO_VERSION}" "moto[server]==${MOTO_VERSION}" moto_server ;;
    schemathesis) install "${repo_root}/.local/venv-schemathesis" schemathesis "${SCHEMATHESIS_VERSION}" \
        "schemathesis==${SCHEMATHESIS_VERSION}" schemathesis ;;
    *) log "unknown tool ${tool} (moto, schemathesis)"; exit 2 ;;
    esac
done

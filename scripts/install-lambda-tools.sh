#!/usr/bin/env bash
# Installs the pinned tools that build and serve the Lambda functions: cargo-lambda (the PyPI
# package ships the binary) and ziglang (the linker cargo-lambda uses for cross builds), into
# their own virtualenv, .local/venv-lambda at the repository root.
#
# Idempotent: when the virtualenv already holds the pinned versions nothing is installed.
# Prints the virtualenv's bin directory on the last line of stdout, so callers can do:
#   PATH="$(scripts/install-lambda-tools.sh | tail -n1):$PATH"
#
# Usage: scripts/install-lambda-tools.sh [--arm64]
#   --arm64   also add the Rust target aarch64-unknown-linux-gnu (needed by
#             `cargo lambda build --arm64`; not needed by `cargo lambda watch`)
#
# Environment:
#   PYTHON   interpreter used to create the virtualenv (default: python3)
set -euo pipefail

CARGO_LAMBDA_VERSION="1.9.2"
ZIGLANG_VERSION="0.17.0"
ARM64_TARGET="aarch64-unknown-linux-gnu"

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "${script_dir}/.." && pwd -P)"
venv="${repo_root}/.local/venv-lambda"
python="${PYTHON:-python3}"

log() { printf '[install-lambda-tools] %s\n' "$*" >&2; }

want_arm64=0
for arg in "$@"; do
    case "${arg}" in
        --arm64) want_arm64=1 ;;
        -h | --help)
            sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            log "error: unknown argument ${arg} (usage: $0 [--arm64])"
            exit 2
            ;;
    esac
done

# Prints the installed version of a distribution in the virtualenv, or nothing.
installed_version() {
    [[ -x "${venv}/bin/python" ]] || return 0
    "${venv}/bin/python" - "$1" <<'PY' 2>/dev/null || true
import sys
from importlib import metadata
try:
    print(metadata.version(sys.argv[1]))
except metadata.PackageNotFoundError:
    pass
PY
}

up_to_date() {
    [[ "$(installed_version cargo-lambda)" == "${CARGO_LAMBDA_VERSION}" ]] &&
        [[ "$(installed_version ziglang)" == "${ZIGLANG_VERSION}" ]] &&
        [[ -x "${venv}/bin/cargo-lambda" ]] &&
        "${venv}/bin/cargo-lambda" lambda --version >/dev/null 2>&1 &&
        "${venv}/bin/python" -m ziglang version >/dev/null 2>&1
}

if up_to_date; then
    log "cargo-lambda ${CARGO_LAMBDA_VERSION} and ziglang ${ZIGLANG_VERSION} already installed"
else
    command -v "${python}" >/dev/null 2>&1 || {
        log "error: ${python} not found (set PYTHON to a Python 3 interpreter with venv)"
        exit 1
    }
    # A virtualenv whose interpreter no longer runs (Python moved) is rebuilt.
    if [[ -e "${venv}" ]] && ! "${venv}/bin/python" -c '' >/dev/null 2>&1; then
        log "removing unusable virtualenv .local/venv-lambda"
        rm -rf -- "${venv}"
    fi
    if [[ ! -x "${venv}/bin/python" ]]; then
        log "creating virtualenv .local/venv-lambda"
        mkdir -p "${repo_root}/.local"
        "${python}" -m venv "${venv}"
    fi
    log "installing cargo-lambda ${CARGO_LAMBDA_VERSION} and ziglang ${ZIGLANG_VERSION}"
    # -q keeps pip from echoing the index it talks to.
    "${venv}/bin/python" -m pip install -q --disable-pip-version-check \
        "cargo-lambda==${CARGO_LAMBDA_VERSION}" "ziglang==${ZIGLANG_VERSION}"
    up_to_date || {
        log "error: the virtualenv does not hold working pinned versions after install"
        exit 1
    }
fi

if ((want_arm64)); then
    command -v rustup >/dev/null 2>&1 || {
        log "error: rustup not found; install the Rust target ${ARM64_TARGET} another way"
        exit 1
    }
    if rustup target list --installed 2>/dev/null | grep -qx "${ARM64_TARGET}"; then
        log "Rust target ${ARM64_TARGET} already installed"
    else
        log "adding Rust target ${ARM64_TARGET}"
        rustup target add "${ARM64_TARGET}" >/dev/null 2>&1 || {
            log "error: rustup target add ${ARM64_TARGET} failed"
            exit 1
        }
    fi
fi

printf '%s\n' "${venv}/bin"

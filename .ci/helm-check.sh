#!/usr/bin/env bash
# Lint the Dockerfile and the Helm chart, render the chart with its default values and with every values
# file in helm/barp-sidecar/ci/, and validate each rendering against the Kubernetes OpenAPI schemas
# (kubernetes-validate --strict: unknown fields are errors) for the oldest and newest supported versions.
#
#   bash .ci/helm-check.sh            (after: bash .ci/install-helm.sh; pip install -e '.[dev]')
#
# Environment: TOOLS (default .tools/bin, where install-helm.sh put helm and hadolint), PYTHON (the
# interpreter with kubernetes-validate installed, default python3), KUBE_VERSIONS (default
# "1.29.0 1.37.0": the chart's kubeVersion floor and the newest schemas kubernetes-validate ships).
#
# Custom resources: kubernetes-validate ships only the built-in kinds; for any other kind it prints
# "WARN ... Couldn't find schema" and passes. The prometheus-operator kinds the chart renders
# (ServiceMonitor, PodMonitor) are therefore NOT schema-validated here; tests/helm/ checks their
# structure and that their selectors and port names match the Service and containers they scrape.
# Any other schema-less kind fails this script, so a typo in apiVersion/kind cannot pass silently.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${TOOLS:-.tools/bin}"
PYTHON="${PYTHON:-python3}"
KUBE_VERSIONS="${KUBE_VERSIONS:-1.29.0 1.37.0}"
CHART=helm/barp-sidecar
HELM="$TOOLS/helm"
HADOLINT="$TOOLS/hadolint"
ALLOWED_SCHEMALESS='kind (ServiceMonitor|PodMonitor) with api version monitoring\.coreos\.com/v1 '

[[ -x "$HELM" ]] || { echo "helm-check: $HELM missing: run bash .ci/install-helm.sh $TOOLS" >&2; exit 1; }
[[ -x "$HADOLINT" ]] || { echo "helm-check: $HADOLINT missing: run bash .ci/install-helm.sh $TOOLS" >&2; exit 1; }
"$PYTHON" -c "import kubernetes_validate" 2>/dev/null \
  || { echo "helm-check: kubernetes-validate missing for $PYTHON: pip install -e '.[dev]'" >&2; exit 1; }

echo "== hadolint Dockerfile"
"$HADOLINT" Dockerfile

RENDERED="$(mktemp -d)"
trap 'rm -rf "$RENDERED"' EXIT

values_files=("")
for file in "$CHART"/ci/*-values.yaml; do values_files+=("$file"); done

for file in "${values_files[@]}"; do
  label="${file:-default values}"
  args=()
  [[ -n "$file" ]] && args=(--values "$file")
  echo "== helm lint --strict ($label)"
  "$HELM" lint --strict "$CHART" "${args[@]}"
  out="$RENDERED/$(basename "${file:-default}").yaml"
  echo "== helm template ($label)"
  "$HELM" template barp "$CHART" --namespace barp "${args[@]}" > "$out"
  for version in $KUBE_VERSIONS; do
    echo "== kubernetes-validate --strict -k $version ($label)"
    report="$("$PYTHON" -m kubernetes_validate --strict --quiet -k "$version" "$out")" || {
      echo "$report"
      exit 1
    }
    unexpected="$(grep '^WARN' <<<"$report" | grep -Ev "$ALLOWED_SCHEMALESS" || true)"
    if [[ -n "$unexpected" ]]; then
      echo "$unexpected"
      echo "helm-check: a rendered kind has no schema and is not an allowed custom resource" >&2
      exit 1
    fi
    grep '^WARN' <<<"$report" | sed 's/^WARN/SKIP (custom resource, checked by tests\/helm)/' || true
  done
done

echo "== helm package"
"$HELM" package "$CHART" --destination "$RENDERED" > /dev/null
ls "$RENDERED"/barp-sidecar-*.tgz

echo "== a values file that violates values.schema.json is rejected"
if "$HELM" template barp "$CHART" --values tests/helm/invalid-values.yaml > /dev/null 2> "$RENDERED/err"; then
  echo "helm-check: helm accepted tests/helm/invalid-values.yaml" >&2
  exit 1
fi
grep -q "additional properties 'replica' not allowed" "$RENDERED/err" \
  || { cat "$RENDERED/err"; echo "helm-check: unexpected rejection message" >&2; exit 1; }

echo "helm-check: OK"

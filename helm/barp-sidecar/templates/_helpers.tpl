{{/*
Names, labels, and the one place where the chart meets the processes: file paths inside the containers,
commands, environment-variable names, and the settings keys the chart owns (sidecar: barp_sidecar/settings.py;
trainer: trainer/service/settings.py). When a setting or a flag changes, this file is what to edit.

Every helper reads only .Values and .Release, so an application chart can call the public templates in
_sidecar.tpl with (dict "Values" <this chart's values> "Release" .Release).
*/}}

{{- define "barp-sidecar.name" -}}
{{- default "barp-sidecar" .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix; at most 47 characters so that "-trainer-config" still fits in 63. */}}
{{- define "barp-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- $name := include "barp-sidecar.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 47 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "barp-sidecar.configName" -}}{{ include "barp-sidecar.fullname" . }}-config{{- end }}
{{- define "barp-sidecar.routerName" -}}{{ include "barp-sidecar.fullname" . }}-router{{- end }}
{{- define "barp-sidecar.trainerName" -}}{{ include "barp-sidecar.fullname" . }}-trainer{{- end }}
{{- define "barp-sidecar.trainerConfigName" -}}{{ include "barp-sidecar.fullname" . }}-trainer-config{{- end }}
{{- define "barp-sidecar.trainerClaimName" -}}
{{- default (printf "%s-data" (include "barp-sidecar.trainerName" .)) .Values.trainer.persistence.existingClaim }}
{{- end }}

{{/* Labels of the resources this chart owns; "component" is router, trainer, config or example-app. */}}
{{- define "barp-sidecar.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: barp
{{ include "barp-sidecar.selectorLabels" . }}
{{- end }}

{{- define "barp-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "barp-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/*
Layout: paths, commands and names both processes depend on. The paths are mount points the templates
create; the settings keys that point at them are written in barp-sidecar.sidecarConfig / trainerConfig.
*/}}
{{- define "barp-sidecar.layout" -}}
configDir: /etc/barp
configFile: /etc/barp/barp.yaml
catalogFile: /etc/barp/catalog.yaml
spoolDir: /var/lib/barp/spool
policyCacheDir: /var/lib/barp/policies
tmpDir: /tmp
serverTLSDir: /etc/barp/tls/server
clientCADir: /etc/barp/tls/client-ca
trainerCADir: /etc/barp/tls/trainer-ca
trainerClientCertDir: /etc/barp/tls/trainer-client
natsCredsDir: /etc/barp/nats/creds
natsCADir: /etc/barp/nats/ca
natsSecretEnv: BARP_NATS_SECRET
trainerConfigDir: /etc/barp-trainer
trainerConfigFile: /etc/barp-trainer/trainer.yaml
trainerDataDir: /var/lib/barp-trainer
sidecarCommand: [barp-sidecar, serve, --config, /etc/barp/barp.yaml]
trainerCommand: [barp-trainer, serve, --config, /etc/barp-trainer/trainer.yaml]
# Environment overrides: BARP__<SECTION>__<KEY> (sidecar), BARP_TRAINER__<SECTION>__<KEY> (trainer).
envPrefix: BARP__
adminTokenEnv: BARP_ADMIN_TOKEN
containerName: barp-sidecar
{{- end }}

{{/* image.tag (+ gpu.imageTagSuffix when gpu.enabled). */}}
{{- define "barp-sidecar.image" -}}
{{- $suffix := ternary .Values.gpu.imageTagSuffix "" .Values.gpu.enabled -}}
{{- printf "%s:%s%s" .Values.image.repository .Values.image.tag $suffix }}
{{- end }}

{{/* The events section both processes get when nats.enabled (docs/deploy.md §9), as YAML; else "". */}}
{{- define "barp-sidecar.natsEvents" -}}
{{- if .Values.nats.enabled }}
{{- $layout := include "barp-sidecar.layout" . | fromYaml -}}
{{- $events := dict "backend" "nats" "nats_urls" .Values.nats.urls "stream_replicas" .Values.nats.streamReplicas -}}
{{- $auth := .Values.nats.auth -}}
{{- if $auth.secretName }}
{{- if eq $auth.method "creds" }}
{{- $_ := set $events "nats_creds_file" (printf "%s/%s" $layout.natsCredsDir $auth.secretKey) }}
{{- else if eq $auth.method "token" }}
{{- $_ := set $events "nats_token_env" $layout.natsSecretEnv }}
{{- else }}
{{- $_ := set $events "nats_user" $auth.user }}
{{- $_ := set $events "nats_password_env" $layout.natsSecretEnv }}
{{- end }}
{{- end }}
{{- if .Values.nats.tls.caSecretName }}
{{- $_ := set $events "nats_tls_ca_file" (printf "%s/ca.crt" $layout.natsCADir) }}
{{- end }}
{{- toYaml $events }}
{{- end }}
{{- end }}

{{/* Container env, volumeMounts and pod volumes for the NATS credentials and CA (nats.enabled). */}}
{{- define "barp-sidecar.natsEnv" -}}
{{- $layout := include "barp-sidecar.layout" . | fromYaml -}}
{{- with .Values.nats }}
{{- if and .enabled .auth.secretName (ne .auth.method "creds") }}
- name: {{ $layout.natsSecretEnv }}
  valueFrom:
    secretKeyRef:
      name: {{ .auth.secretName }}
      key: {{ .auth.secretKey }}
{{- end }}
{{- end }}
{{- end }}

{{- define "barp-sidecar.natsMounts" -}}
{{- $layout := include "barp-sidecar.layout" . | fromYaml -}}
{{- with .Values.nats }}
{{- if and .enabled .auth.secretName (eq .auth.method "creds") }}
- name: barp-nats-creds
  mountPath: {{ $layout.natsCredsDir }}
  readOnly: true
{{- end }}
{{- if and .enabled .tls.caSecretName }}
- name: barp-nats-ca
  mountPath: {{ $layout.natsCADir }}
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{- define "barp-sidecar.natsVolumes" -}}
{{- with .Values.nats }}
{{- if and .enabled .auth.secretName (eq .auth.method "creds") }}
- name: barp-nats-creds
  secret:
    secretName: {{ .auth.secretName }}
    items:
      - key: {{ .auth.secretKey }}
        path: {{ .auth.secretKey }}
{{- end }}
{{- if and .enabled .tls.caSecretName }}
- name: barp-nats-ca
  secret:
    secretName: {{ .tls.caSecretName }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end }}
{{- end }}

{{/* The trainer address sidecars dial: trainerClient.target, else this release's trainer Service; none
when nats.policiesFromNats (policies then come from JetStream, events always do with nats.enabled). */}}
{{- define "barp-sidecar.trainerTarget" -}}
{{- if and .Values.nats.enabled .Values.nats.policiesFromNats }}
{{- else if .Values.trainerClient.target }}
{{- .Values.trainerClient.target }}
{{- else if .Values.trainer.enabled }}
{{- printf "%s.%s.svc:%v" (include "barp-sidecar.trainerName" .) .Release.Namespace .Values.trainer.service.port }}
{{- end }}
{{- end }}

{{/*
Sidecar settings file (barp.yaml): values.config with the chart-owned keys laid over it. Mode-specific
keys (server.host and the server TLS files) are environment overrides set by barp-sidecar.container, so
the injected sidecars and the standalone router share one ConfigMap.
*/}}
{{- define "barp-sidecar.sidecarConfig" -}}
{{- $layout := include "barp-sidecar.layout" . | fromYaml -}}
{{- $owned := dict
  "server" (dict "port" .Values.ports.grpc "health_port" .Values.ports.health)
  "metrics" (dict "host" "0.0.0.0" "port" .Values.ports.metrics)
  "http" (dict "port" .Values.ports.http)
  "admin" (dict "host" (ternary "0.0.0.0" "127.0.0.1" .Values.admin.expose) "port" .Values.ports.admin "token_env" $layout.adminTokenEnv)
  "rewards" (dict "spool_dir" $layout.spoolDir)
-}}
{{- if .Values.catalog }}
{{- $_ := set $owned "providers" (dict "catalog_file" $layout.catalogFile) }}
{{- end }}
{{- $trainer := dict "checkpoint_cache_dir" $layout.policyCacheDir }}
{{- $target := include "barp-sidecar.trainerTarget" . -}}
{{- if $target }}
{{- $_ := set $trainer "target" $target }}
{{- if .Values.trainerClient.tls.enabled }}
{{- $_ := set $trainer "tls_ca_file" (printf "%s/ca.crt" $layout.trainerCADir) }}
{{- if .Values.trainerClient.tls.clientCertSecretName }}
{{- $_ := set $trainer "tls_cert_file" (printf "%s/tls.crt" $layout.trainerClientCertDir) }}
{{- $_ := set $trainer "tls_key_file" (printf "%s/tls.key" $layout.trainerClientCertDir) }}
{{- end }}
{{- end }}
{{- end }}
{{- $_ := set $owned "trainer" $trainer }}
{{- with include "barp-sidecar.natsEvents" . }}
{{- $_ := set $owned "events" (fromYaml .) }}
{{- end }}
{{- toYaml (mustMergeOverwrite (deepCopy .Values.config) $owned) }}
{{- end }}

{{- define "barp-sidecar.catalog" -}}
{{- if .Values.catalog }}
{{- toYaml (mustMergeOverwrite (dict "version" 1) .Values.catalog) }}
{{- end }}
{{- end }}

{{/* Trainer settings file (trainer.yaml): trainer.config with the chart-owned keys laid over it. */}}
{{- define "barp-sidecar.trainerConfig" -}}
{{- $layout := include "barp-sidecar.layout" . | fromYaml -}}
{{- $server := dict "host" "0.0.0.0" "port" .Values.ports.trainer "health_port" .Values.ports.trainerHealth -}}
{{- if .Values.trainer.tls.enabled }}
{{- $_ := set $server "tls_cert_file" (printf "%s/tls.crt" $layout.serverTLSDir) }}
{{- $_ := set $server "tls_key_file" (printf "%s/tls.key" $layout.serverTLSDir) }}
{{- if .Values.trainer.tls.mutual }}
{{- $_ := set $server "tls_client_ca_file" (printf "%s/ca.crt" $layout.clientCADir) }}
{{- end }}
{{- end }}
{{- $owned := dict "server" $server "storage" (dict "data_dir" $layout.trainerDataDir) "metrics" (dict "host" "0.0.0.0" "port" .Values.ports.trainerMetrics) -}}
{{- with include "barp-sidecar.natsEvents" . }}
{{- $_ := set $owned "events" (fromYaml .) }}
{{- end }}
{{- if gt (int .Values.trainer.replicas) 1 }}
{{- /* One active replica through the JetStream lease; replica_id defaults to the pod name. */}}
{{- $_ := set $owned "failover" (dict "enabled" true) }}
{{- end }}
{{- toYaml (mustMergeOverwrite (deepCopy .Values.trainer.config) $owned) }}
{{- end }}

{{/* Checksums that roll pods when their configuration changes. */}}
{{- define "barp-sidecar.configChecksum" -}}
{{- printf "%s\n---\n%s" (include "barp-sidecar.sidecarConfig" .) (include "barp-sidecar.catalog" .) | sha256sum }}
{{- end }}

{{- define "barp-sidecar.trainerConfigChecksum" -}}
{{- include "barp-sidecar.trainerConfig" . | sha256sum }}
{{- end }}

{{/* "true" when config.http.enabled turns the OpenAI-compatible HTTP API on, else "". */}}
{{- define "barp-sidecar.httpEnabled" -}}
{{- if (.Values.config.http | default dict).enabled }}true{{ end }}
{{- end }}

{{/* gRPC probe block on a plaintext health-only port: (dict "port" N "probe" <values probe>). */}}
{{- define "barp-sidecar.grpcProbe" -}}
grpc:
  port: {{ .port }}
  service: ""
{{- range $key, $value := .probe }}
{{ $key }}: {{ $value }}
{{- end }}
{{- end }}

{{/* Fail rendering with a message naming the value, for checks JSON schema cannot express. */}}
{{- define "barp-sidecar.validate" -}}
{{- if and .Values.standalone.enabled .Values.standalone.tls.enabled (not .Values.standalone.tls.secretName) }}
{{- fail "standalone.tls.secretName: required when standalone.tls.enabled is true" }}
{{- end }}
{{- if and .Values.trainer.enabled .Values.trainer.tls.enabled (not .Values.trainer.tls.secretName) }}
{{- fail "trainer.tls.secretName: required when trainer.tls.enabled is true" }}
{{- end }}
{{- if and .Values.trainerClient.tls.enabled (not .Values.trainerClient.tls.caSecretName) }}
{{- fail "trainerClient.tls.caSecretName: required when trainerClient.tls.enabled is true" }}
{{- end }}
{{- if and .Values.trainer.enabled .Values.trainer.tls.enabled (not .Values.trainerClient.target) (not .Values.trainerClient.tls.enabled) }}
{{- fail "trainerClient.tls.enabled: must be true when trainer.tls.enabled is true (sidecars would dial TLS in plaintext)" }}
{{- end }}
{{- if and .Values.trainer.enabled .Values.trainer.tls.enabled .Values.trainer.tls.mutual (not .Values.trainerClient.target) (not .Values.trainerClient.tls.clientCertSecretName) }}
{{- fail "trainerClient.tls.clientCertSecretName: required when trainer.tls.mutual is true" }}
{{- end }}
{{- if and .Values.admin.expose (not .Values.admin.tokenSecret.name) }}
{{- fail "admin.tokenSecret.name: required when admin.expose is true (the Admin API needs a bearer token off loopback)" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.standalone.enabled) (not .Values.trainer.enabled) }}
{{- fail "metrics.serviceMonitor.enabled: monitors the trainer's and the standalone router's Services, and neither is enabled; use metrics.podMonitor for injected sidecars" }}
{{- end }}
{{- if and .Values.standalone.enabled .Values.standalone.pdb.enabled (not (kindIs "string" .Values.standalone.pdb.minAvailable)) (ge (int .Values.standalone.pdb.minAvailable) (int .Values.standalone.replicas)) }}
{{- fail (printf "standalone.pdb.minAvailable: %v would block every voluntary eviction with standalone.replicas=%v; lower it or raise replicas" .Values.standalone.pdb.minAvailable .Values.standalone.replicas) }}
{{- end }}
{{- if and .Values.trainer.enabled (gt (int .Values.trainer.replicas) 1) (not .Values.nats.enabled) }}
{{- fail (printf "trainer.replicas: %v replicas need nats.enabled true (the active trainer holds a lease in JetStream KV); with the gRPC event backend run 1" .Values.trainer.replicas) }}
{{- end }}
{{- if and .Values.trainer.enabled (gt (int .Values.trainer.replicas) 1) (not .Values.nats.policiesFromNats) }}
{{- fail "trainer.replicas: several replicas need nats.policiesFromNats true (only the active replica announces policies; sidecars must not dial one trainer over gRPC)" }}
{{- end }}
{{- if and .Values.trainer.enabled (gt (int .Values.trainer.replicas) 1) .Values.trainer.persistence.existingClaim }}
{{- fail "trainer.persistence.existingClaim: each of several trainer replicas gets its own volume (volumeClaimTemplates); leave existingClaim empty" }}
{{- end }}
{{- if and (not .Values.sidecar.enabled) (or .Values.standalone.enabled .Values.exampleApp.enabled) }}
{{- fail "sidecar.enabled: the standalone router and the example app mount the sidecar ConfigMap; keep sidecar.enabled true" }}
{{- end }}
{{- end }}

{{/*
Public templates for injecting the sidecar into an application's pod. An application chart that lists
this chart as a dependency (alias barp) writes, in its Deployment:

  {{- $barp := dict "Values" .Values.barp "Release" .Release }}
  template:
    metadata:
      labels:      {{- include "barp-sidecar.podLabels" $barp | nindent 8 }}
      annotations: {{- include "barp-sidecar.podAnnotations" $barp | nindent 8 }}
    spec:
      containers:
        - name: app
          ...   # calls the router at 127.0.0.1:<ports.grpc>
        {{- include "barp-sidecar.container" $barp | nindent 8 }}
      volumes:
        {{- include "barp-sidecar.volumes" $barp | nindent 8 }}

Context keys: Values (this chart's values), Release, and optionally
  mode:   "sidecar" (default: Router on loopback, no TLS) or "standalone" (Router on 0.0.0.0, TLS per
          standalone.tls) — used by this chart's own router Deployment;
  native: true to render a native sidecar (restartPolicy: Always) for the pod's initContainers.
Volume names start with "barp-" so they do not collide with the application's.
*/}}

{{- define "barp-sidecar.podLabels" -}}
barp-sidecar.dev/sidecar: "true"
barp-sidecar.dev/instance: {{ .Release.Name | quote }}
{{- end }}

{{- define "barp-sidecar.podAnnotations" -}}
checksum/barp-config: {{ include "barp-sidecar.configChecksum" . }}
{{- end }}

{{- define "barp-sidecar.container" -}}
{{- $layout := include "barp-sidecar.layout" . | fromYaml -}}
{{- $standalone := eq (default "sidecar" .mode) "standalone" -}}
{{- $serverTLS := and $standalone .Values.standalone.tls.enabled -}}
{{- $http := and $standalone (include "barp-sidecar.httpEnabled" .) -}}
- name: {{ $layout.containerName }}
  image: {{ include "barp-sidecar.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if .native }}
  restartPolicy: Always
  {{- end }}
  command: {{ toJson $layout.sidecarCommand }}
  ports:
    {{- if $standalone }}
    - name: barp-grpc
      containerPort: {{ .Values.ports.grpc }}
      protocol: TCP
    {{- end }}
    - name: barp-health
      containerPort: {{ .Values.ports.health }}
      protocol: TCP
    - name: barp-metrics
      containerPort: {{ .Values.ports.metrics }}
      protocol: TCP
    {{- if .Values.admin.expose }}
    - name: barp-admin
      containerPort: {{ .Values.ports.admin }}
      protocol: TCP
    {{- end }}
    {{- if $http }}
    {{- /* Injected: the application calls the HTTP API on loopback, so the port is not declared. */}}
    - name: barp-http
      containerPort: {{ .Values.ports.http }}
      protocol: TCP
    {{- end }}
  env:
    # Mode-specific settings; the rest comes from {{ $layout.configFile }}.
    - name: {{ $layout.envPrefix }}SERVER__HOST
      value: {{ ternary "0.0.0.0" "127.0.0.1" $standalone | quote }}
    {{- if $http }}
    - name: {{ $layout.envPrefix }}HTTP__HOST
      value: {{ ternary "0.0.0.0" "127.0.0.1" $standalone | quote }}
    {{- end }}
    {{- if $serverTLS }}
    - name: {{ $layout.envPrefix }}SERVER__TLS_CERT_FILE
      value: {{ printf "%s/tls.crt" $layout.serverTLSDir | quote }}
    - name: {{ $layout.envPrefix }}SERVER__TLS_KEY_FILE
      value: {{ printf "%s/tls.key" $layout.serverTLSDir | quote }}
    {{- if .Values.standalone.tls.mutual }}
    - name: {{ $layout.envPrefix }}SERVER__TLS_CLIENT_CA_FILE
      value: {{ printf "%s/ca.crt" $layout.clientCADir | quote }}
    {{- end }}
    {{- end }}
    {{- if .Values.gpu.enabled }}
    - name: {{ $layout.envPrefix }}POLICY__DEVICE
      value: "cuda"
    {{- end }}
    {{- if .Values.admin.expose }}
    - name: {{ $layout.adminTokenEnv }}
      valueFrom:
        secretKeyRef:
          name: {{ .Values.admin.tokenSecret.name }}
          key: {{ .Values.admin.tokenSecret.key }}
    {{- end }}
    {{- range .Values.apiKeys }}
    - name: {{ .env }}
      valueFrom:
        secretKeyRef:
          name: {{ .secretName }}
          key: {{ .secretKey }}
    {{- end }}
    {{- with include "barp-sidecar.natsEnv" . }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- with .Values.sidecar.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  resources:
    {{- $resources := deepCopy .Values.sidecar.resources }}
    {{- if .Values.gpu.enabled }}
    {{- $limits := default (dict) $resources.limits }}
    {{- $_ := set $limits .Values.gpu.resourceName .Values.gpu.count }}
    {{- $_ := set $resources "limits" $limits }}
    {{- end }}
    {{- toYaml $resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  startupProbe:
    {{- include "barp-sidecar.grpcProbe" (dict "port" .Values.ports.health "probe" .Values.sidecar.startupProbe) | nindent 4 }}
  livenessProbe:
    {{- include "barp-sidecar.grpcProbe" (dict "port" .Values.ports.health "probe" .Values.sidecar.livenessProbe) | nindent 4 }}
  readinessProbe:
    {{- include "barp-sidecar.grpcProbe" (dict "port" .Values.ports.health "probe" .Values.sidecar.readinessProbe) | nindent 4 }}
  volumeMounts:
    - name: barp-config
      mountPath: {{ $layout.configDir }}
      readOnly: true
    - name: barp-spool
      mountPath: {{ $layout.spoolDir }}
    - name: barp-policies
      mountPath: {{ $layout.policyCacheDir }}
    - name: barp-tmp
      mountPath: {{ $layout.tmpDir }}
    {{- if $serverTLS }}
    - name: barp-server-tls
      mountPath: {{ $layout.serverTLSDir }}
      readOnly: true
    {{- if .Values.standalone.tls.mutual }}
    - name: barp-client-ca
      mountPath: {{ $layout.clientCADir }}
      readOnly: true
    {{- end }}
    {{- end }}
    {{- if .Values.trainerClient.tls.enabled }}
    - name: barp-trainer-ca
      mountPath: {{ $layout.trainerCADir }}
      readOnly: true
    {{- if .Values.trainerClient.tls.clientCertSecretName }}
    - name: barp-trainer-client-cert
      mountPath: {{ $layout.trainerClientCertDir }}
      readOnly: true
    {{- end }}
    {{- end }}
    {{- with include "barp-sidecar.natsMounts" . }}
    {{- . | nindent 4 }}
    {{- end }}
{{- end }}

{{- define "barp-sidecar.volumes" -}}
{{- $standalone := eq (default "sidecar" .mode) "standalone" -}}
- name: barp-config
  configMap:
    name: {{ include "barp-sidecar.configName" . }}
- name: barp-spool
  emptyDir:
    sizeLimit: {{ .Values.sidecar.spoolSizeLimit }}
- name: barp-policies
  emptyDir:
    sizeLimit: {{ .Values.sidecar.policyCacheSizeLimit }}
- name: barp-tmp
  emptyDir:
    sizeLimit: {{ .Values.sidecar.tmpSizeLimit }}
{{- if and $standalone .Values.standalone.tls.enabled }}
- name: barp-server-tls
  secret:
    secretName: {{ .Values.standalone.tls.secretName }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- if .Values.standalone.tls.mutual }}
- name: barp-client-ca
  secret:
    secretName: {{ default .Values.standalone.tls.secretName .Values.standalone.tls.clientCASecretName }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end }}
{{- if .Values.trainerClient.tls.enabled }}
- name: barp-trainer-ca
  secret:
    secretName: {{ .Values.trainerClient.tls.caSecretName }}
    items:
      - key: ca.crt
        path: ca.crt
{{- if .Values.trainerClient.tls.clientCertSecretName }}
- name: barp-trainer-client-cert
  secret:
    secretName: {{ .Values.trainerClient.tls.clientCertSecretName }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end }}
{{- with include "barp-sidecar.natsVolumes" . }}
{{ . }}
{{- end }}
{{- end }}

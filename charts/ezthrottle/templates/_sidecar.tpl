{{/*
Sidecar: named templates for YOUR pod spec (mode: sidecar). In a chart that
has ezthrottle as a dependency, pass the dependency's context:

  metadata:
    labels:
      {{- include "ezthrottle.sidecar.podLabels" .Subcharts.ezthrottle | nindent 8 }}
    annotations:
      {{- include "ezthrottle.sidecar.podAnnotations" .Subcharts.ezthrottle | nindent 8 }}
  spec:
    initContainers:
      {{- include "ezthrottle.sidecar.initContainers" .Subcharts.ezthrottle | nindent 6 }}
    containers:
      - name: app
        env:
          {{- include "ezthrottle.sidecar.appEnv" .Subcharts.ezthrottle | nindent 10 }}
        volumeMounts:
          {{- include "ezthrottle.sidecar.appVolumeMounts" .Subcharts.ezthrottle | nindent 10 }}
      {{- include "ezthrottle.sidecar.containers" .Subcharts.ezthrottle | nindent 6 }}
    volumes:
      {{- include "ezthrottle.sidecar.volumes" .Subcharts.ezthrottle | nindent 6 }}

Each renders a YAML list (or map) without a key, possibly empty. The Secrets
and the config they refer to are rendered by the ezthrottle chart itself
(same release), so they always match. charts/example-app is a complete
example; docs/kubernetes.md explains every piece.
*/}}

{{/* Whether ezthrottle runs as a native sidecar (init container, restartPolicy: Always). */}}
{{- define "ezthrottle.sidecar.native" -}}
{{- $n := .Values.sidecar.native | toString }}
{{- if eq $n "true" }}true
{{- else if eq $n "auto" }}{{ if semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version }}true{{ end }}
{{- end }}
{{- end }}

{{/* Path of the CA bundle (system roots + ezthrottle CA) or of the CA alone, in the app container. */}}
{{- define "ezthrottle.sidecar.bundlePath" -}}
{{- if .Values.sidecar.trustBundle.enabled }}{{ printf "%s/ca-bundle.pem" .Values.sidecar.trustMountPath }}
{{- else }}{{ printf "%s/ca.pem" .Values.sidecar.trustMountPath }}
{{- end }}
{{- end }}

{{/* Pod labels: mark the pod for the sidecar PodMonitor. */}}
{{- define "ezthrottle.sidecar.podLabels" -}}
{{ .Values.sidecar.podLabelKey }}: {{ include "ezthrottle.fullname" . }}
{{- end }}

{{/* Pod annotations: roll the pod when ezthrottle's config, CA or secrets change. */}}
{{- define "ezthrottle.sidecar.podAnnotations" -}}
checksum/ezthrottle: {{ include "ezthrottle.checksum" . }}
{{- end }}

{{/* Init containers: the trust bundle, then ezthrottle itself when it is a native sidecar. */}}
{{- define "ezthrottle.sidecar.initContainers" -}}
{{- include "ezthrottle.validate" . }}
{{- if .Values.sidecar.trustBundle.enabled }}
- name: ezthrottle-trust
  image: {{ include "ezthrottle.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  # The image's system roots plus the ezthrottle CA in one file, for
  # SSL_CERT_FILE / REQUESTS_CA_BUNDLE (which replace the default bundle).
  command:
    - /bin/sh
    - -c
    - cat /etc/ssl/certs/ca-certificates.crt /ezthrottle-ca/ca.pem > /ezthrottle-trust/ca-bundle.pem && cp /ezthrottle-ca/ca.pem /ezthrottle-trust/ca.pem
  resources:
    requests:
      cpu: 10m
      memory: 16Mi
    limits:
      memory: 32Mi
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: ezthrottle-ca-cert
      mountPath: /ezthrottle-ca
      readOnly: true
    - name: ezthrottle-trust
      mountPath: /ezthrottle-trust
{{- end }}
{{- if include "ezthrottle.sidecar.native" . }}
{{ include "ezthrottle.container" (dict "ctx" . "native" true) }}
{{- end }}
{{- end }}

{{/* Containers: ezthrottle, unless it runs as a native sidecar. */}}
{{- define "ezthrottle.sidecar.containers" -}}
{{- if not (include "ezthrottle.sidecar.native" .) }}
{{- include "ezthrottle.validate" . }}
{{ include "ezthrottle.container" (dict "ctx" . "native" false) }}
{{- end }}
{{- end }}

{{/* Environment of the app container: the proxy and the CA trust. */}}
{{- define "ezthrottle.sidecar.appEnv" -}}
{{- $proxy := printf "http://127.0.0.1:%d" (int .Values.ports.proxy) }}
{{- $noProxy := join "," .Values.sidecar.noProxy }}
{{- $bundle := include "ezthrottle.sidecar.bundlePath" . -}}
- name: HTTP_PROXY
  value: {{ $proxy | quote }}
- name: http_proxy
  value: {{ $proxy | quote }}
- name: HTTPS_PROXY
  value: {{ $proxy | quote }}
- name: https_proxy
  value: {{ $proxy | quote }}
- name: NO_PROXY
  value: {{ $noProxy | quote }}
- name: no_proxy
  value: {{ $noProxy | quote }}
- name: SSL_CERT_FILE
  value: {{ $bundle | quote }}
- name: REQUESTS_CA_BUNDLE
  value: {{ $bundle | quote }}
- name: CURL_CA_BUNDLE
  value: {{ $bundle | quote }}
- name: NODE_EXTRA_CA_CERTS
  value: {{ printf "%s/ca.pem" .Values.sidecar.trustMountPath | quote }}
- name: NODE_USE_ENV_PROXY
  value: "1"
{{- end }}

{{/* Volume mounts of the app container: the trust files (never the CA key). */}}
{{- define "ezthrottle.sidecar.appVolumeMounts" -}}
- name: {{ ternary "ezthrottle-trust" "ezthrottle-ca-cert" .Values.sidecar.trustBundle.enabled }}
  mountPath: {{ .Values.sidecar.trustMountPath }}
  readOnly: true
{{- end }}

{{/* Pod volumes for all of the above. */}}
{{- define "ezthrottle.sidecar.volumes" -}}
{{- $data := dict "emptyDir" (dict) }}
{{- with .Values.dataVolume.sizeLimit }}{{ $data = dict "emptyDir" (dict "sizeLimit" .) }}{{ end }}
{{- include "ezthrottle.volumes" (dict "ctx" . "dataVolume" $data) }}
- name: ezthrottle-ca-cert
  secret:
    secretName: {{ include "ezthrottle.ca.secretName" . }}
    defaultMode: 292
    items:
      - key: {{ include "ezthrottle.ca.certKey" . }}
        path: ca.pem
{{- if .Values.sidecar.trustBundle.enabled }}
- name: ezthrottle-trust
  emptyDir:
    sizeLimit: 2Mi
{{- end }}
{{- end }}

{{/*
Names, labels and the pieces shared by the gateway and the sidecar.

Every template here takes the chart's own context ($ inside this chart;
.Subcharts.ezthrottle from a parent chart that has ezthrottle as a
dependency). The public sidecar templates are in _sidecar.tpl.
*/}}

{{- define "ezthrottle.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ezthrottle.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ezthrottle.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ezthrottle.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ezthrottle.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ezthrottle.labels" -}}
helm.sh/chart: {{ include "ezthrottle.chart" . }}
{{ include "ezthrottle.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ezthrottle
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of the gateway pods (and the Deployment's selector). */}}
{{- define "ezthrottle.gatewaySelectorLabels" -}}
{{ include "ezthrottle.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "ezthrottle.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{- define "ezthrottle.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ezthrottle.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Fixed paths inside the ezthrottle container. */}}
{{- define "ezthrottle.dataDir" -}}/var/lib/ezthrottle{{- end }}
{{- define "ezthrottle.configDir" -}}/etc/ezthrottle/config{{- end }}
{{- define "ezthrottle.caDir" -}}/etc/ezthrottle/ca{{- end }}

{{/* ---------------------------------------------------------------- CA */}}

{{/* Where the CA comes from: secret | values | generate | none. */}}
{{- define "ezthrottle.ca.source" -}}
{{- if .Values.ca.existingSecret }}secret
{{- else if and .Values.ca.cert .Values.ca.key }}values
{{- else if or .Values.ca.cert .Values.ca.key }}{{ fail "ca.cert and ca.key go together: set both or neither" }}
{{- else if .Values.ca.generate.enabled }}generate
{{- else }}none
{{- end }}
{{- end }}

{{- define "ezthrottle.ca.chartSecretName" -}}
{{- printf "%s-ca" (include "ezthrottle.fullname" .) }}
{{- end }}

{{/* The Secret that holds the CA (empty with source none). */}}
{{- define "ezthrottle.ca.secretName" -}}
{{- $src := include "ezthrottle.ca.source" . }}
{{- if eq $src "secret" }}{{ .Values.ca.existingSecret }}
{{- else if ne $src "none" }}{{ include "ezthrottle.ca.chartSecretName" . }}
{{- end }}
{{- end }}

{{- define "ezthrottle.ca.certKey" -}}
{{- if eq (include "ezthrottle.ca.source" .) "secret" }}{{ .Values.ca.certKey }}{{ else }}ca.pem{{ end }}
{{- end }}

{{- define "ezthrottle.ca.keyKey" -}}
{{- if eq (include "ezthrottle.ca.source" .) "secret" }}{{ .Values.ca.keyKey }}{{ else }}ca.key{{ end }}
{{- end }}

{{/*
The CA this chart stores, as JSON {"cert","key"}: from the values, else the
one generated for an earlier release (read back, so upgrades keep it), else a
new Ed25519 CA (Helm's RSA/EC keys are PKCS#1/SEC1, which ezthrottle cannot
sign with; Ed25519 keys are PKCS#8). Generated once per render.
*/}}
{{- define "ezthrottle.ca.pem" -}}
{{- if not (hasKey .Values "__ezthrottleCa") }}
{{- $ca := dict }}
{{- if eq (include "ezthrottle.ca.source" .) "values" }}
{{- $ca = dict "cert" .Values.ca.cert "key" .Values.ca.key }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "ezthrottle.ca.chartSecretName" .) }}
{{- if and $existing $existing.data (hasKey $existing.data "ca.pem") (hasKey $existing.data "ca.key") }}
{{- $ca = dict "cert" (index $existing.data "ca.pem" | b64dec) "key" (index $existing.data "ca.key" | b64dec) }}
{{- else }}
{{- $key := genPrivateKey "ed25519" }}
{{- $gen := genCAWithKey .Values.ca.generate.commonName (int .Values.ca.generate.validityDays) $key }}
{{- $ca = dict "cert" $gen.Cert "key" $gen.Key }}
{{- end }}
{{- end }}
{{- $_ := set .Values "__ezthrottleCa" $ca }}
{{- end }}
{{- toJson (get .Values "__ezthrottleCa") }}
{{- end }}

{{/* ---------------------------------------------------------- API keys */}}

{{/* Whether the control port listens on loopback. */}}
{{- define "ezthrottle.controlLoopback" -}}
{{- if .Values.controlOnLoopback }}true{{ end }}
{{- end }}

{{/*
The generated control API token: read back from the release's config Secret
(so upgrades keep it), else new. Generated once per render.
*/}}
{{- define "ezthrottle.generatedApiKey" -}}
{{- if not (hasKey .Values "__ezthrottleApiKey") }}
{{- $token := "" }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (printf "%s-config" (include "ezthrottle.fullname" .)) }}
{{- if and $existing $existing.data (hasKey $existing.data "api-key") }}
{{- $token = index $existing.data "api-key" | b64dec }}
{{- else }}
{{- $token = printf "ezt_%s" (randAlphaNum 40) }}
{{- end }}
{{- $_ := set .Values "__ezthrottleApiKey" $token }}
{{- end }}
{{- get .Values "__ezthrottleApiKey" }}
{{- end }}

{{/* Whether the chart generates the token. */}}
{{- define "ezthrottle.generatesApiKey" -}}
{{- if and (not .Values.apiKeys) .Values.generateApiKey (not .Values.controlOnLoopback) (not .Values.existingConfigSecret) }}true{{ end }}
{{- end }}

{{/* token -> workspace, as JSON. */}}
{{- define "ezthrottle.apiKeys" -}}
{{- $keys := deepCopy (.Values.apiKeys | default dict) }}
{{- if include "ezthrottle.generatesApiKey" . }}
{{- $_ := set $keys (include "ezthrottle.generatedApiKey" .) "default" }}
{{- end }}
{{- toJson $keys }}
{{- end }}

{{/* ------------------------------------------------------------ config */}}

{{/* Whether the config file is a Secret (it holds tokens or a store URL). */}}
{{- define "ezthrottle.configInSecret" -}}
{{- $storage := .Values.config.storage | default dict }}
{{- if or .Values.existingConfigSecret (include "ezthrottle.apiKeys" . | fromJson) $storage.url }}true{{ end }}
{{- end }}

{{- define "ezthrottle.configName" -}}
{{- if .Values.existingConfigSecret }}{{ .Values.existingConfigSecret }}
{{- else }}{{ printf "%s-config" (include "ezthrottle.fullname" .) }}
{{- end }}
{{- end }}

{{/* The config tree: `config` plus what the chart sets itself, as JSON. */}}
{{- define "ezthrottle.configDict" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $_ := set $cfg "data_dir" (include "ezthrottle.dataDir" .) }}
{{- $proxy := deepCopy (get $cfg "proxy" | default dict) }}
{{- if eq .Values.mode "sidecar" }}
{{- $_ := set $proxy "listen" (printf "127.0.0.1:%d" (int .Values.ports.proxy)) }}
{{- else }}
{{- $_ := set $proxy "listen" (printf "%s:%d" .Values.listenAddress (int .Values.ports.proxy)) }}
{{- if not (get $proxy "allow_clients") }}
{{- $_ := set $proxy "allow_clients" .Values.gateway.allowClients }}
{{- end }}
{{- end }}
{{- $_ := set $cfg "proxy" $proxy }}
{{- $control := dict }}
{{- if .Values.controlOnLoopback }}
{{- $_ := set $control "listen" (printf "127.0.0.1:%d" (int .Values.ports.control)) }}
{{- else }}
{{- $_ := set $control "listen" (printf "%s:%d" .Values.listenAddress (int .Values.ports.control)) }}
{{- end }}
{{- $keys := include "ezthrottle.apiKeys" . | fromJson }}
{{- if $keys }}
{{- $_ := set $control "api_keys" $keys }}
{{- end }}
{{- $_ := set $cfg "control" $control }}
{{- if .Values.storageEncryptionKey.existingSecret }}
{{- $storage := deepCopy (get $cfg "storage" | default dict) }}
{{- $_ := set $storage "encryption_key_env" "EZTHROTTLE_STORAGE_KEY" }}
{{- $_ := set $cfg "storage" $storage }}
{{- end }}
{{- if (.Values.redis | default dict).existingSecret }}
{{- $storage := deepCopy (get $cfg "storage" | default dict) }}
{{- $_ := set $storage "url_env" "EZTHROTTLE_REDIS_URL" }}
{{- $_ := set $cfg "storage" $storage }}
{{- end }}
{{- if ne (include "ezthrottle.ca.source" .) "none" }}
{{- $tls := deepCopy (get $cfg "tls" | default dict) }}
{{- $_ := set $tls "ca_cert" (printf "%s/ca.pem" (include "ezthrottle.caDir" .)) }}
{{- $_ := set $tls "ca_key" (printf "%s/ca.key" (include "ezthrottle.caDir" .)) }}
{{- $_ := set $cfg "tls" $tls }}
{{- end }}
{{- toJson $cfg }}
{{- end }}

{{/* The config file (TOML). */}}
{{- define "ezthrottle.configToml" -}}
# ezthrottle.toml rendered by the {{ include "ezthrottle.chart" . }} Helm chart
# (release {{ .Release.Name }}, mode {{ .Values.mode }}). Keys: conf/ezthrottle.toml.
{{- include "ezthrottle.toml.table" (dict "path" "" "table" (include "ezthrottle.configDict" . | fromJson)) }}
{{ end }}

{{/* A TOML key: bare when it may be, else a quoted string. */}}
{{- define "ezthrottle.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/*
A TOML value. Numbers that are whole are written as integers (values files
turn every number into a float; ezthrottle accepts an integer wherever it
wants a float, not the other way round).
*/}}
{{- define "ezthrottle.toml.value" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}{{ toJson $v }}
{{- else if kindIs "bool" $v }}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) }}
{{- if eq (float64 (int64 $v)) (float64 $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) }}{{ $v }}
{{- else if kindIs "slice" $v }}[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "ezthrottle.toml.value" $e }}{{ end }}]
{{- else if kindIs "map" $v }}{ {{- range $i, $k := keys $v | sortAlpha }}{{ if $i }},{{ end }} {{ include "ezthrottle.toml.key" $k }} = {{ include "ezthrottle.toml.value" (get $v $k) }}{{ end }} }
{{- else }}{{ fail (printf "config: cannot write %v (%s) as TOML" $v (kindOf $v)) }}
{{- end }}
{{- end }}

{{/* A TOML table: its plain keys, then its sub-tables ([a.b."c.d"]). Null values are left out. */}}
{{- define "ezthrottle.toml.table" -}}
{{- $path := .path }}
{{- $t := .table }}
{{- $tables := list }}
{{- range $k := keys $t | sortAlpha }}
{{- $v := get $t $k }}
{{- if kindIs "map" $v }}
{{- $tables = append $tables $k }}
{{- else if not (kindIs "invalid" $v) }}
{{ include "ezthrottle.toml.key" $k }} = {{ include "ezthrottle.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k := $tables }}
{{- $sub := include "ezthrottle.toml.key" $k }}
{{- if $path }}{{ $sub = printf "%s.%s" $path $sub }}{{ end }}
{{ printf "\n[%s]" $sub }}
{{- include "ezthrottle.toml.table" (dict "path" $sub "table" (get $t $k)) }}
{{- end }}
{{- end }}

{{/* Checksum of what the ezthrottle container reads, to roll pods on change. */}}
{{- define "ezthrottle.checksum" -}}
{{- $src := include "ezthrottle.ca.source" . }}
{{- $ca := "" }}
{{- if or (eq $src "values") (eq $src "generate") }}{{ $ca = include "ezthrottle.ca.pem" . }}{{ end }}
{{- printf "%s\n%s\n%s" (include "ezthrottle.configToml" .) $ca (toJson .Values.webhookSecret) | sha256sum }}
{{- end }}

{{/* ------------------------------------------------------------ checks */}}

{{- define "ezthrottle.validate" -}}
{{- if not (has .Values.mode (list "gateway" "sidecar")) }}
{{- fail (printf "mode must be gateway or sidecar, got %q" .Values.mode) }}
{{- end }}
{{- $src := include "ezthrottle.ca.source" . }}
{{- $storage := .Values.config.storage | default dict }}
{{- $embedded := eq ($storage.backend | default "embedded") "embedded" }}
{{- $redisSecret := (.Values.redis | default dict).existingSecret }}
{{- if eq ($storage.backend | default "embedded") "redis" }}
{{- if and $storage.url $redisSecret }}
{{- fail "config.storage.url and redis.existingSecret both give the Redis URL: set one (the Secret keeps the password out of the config)" }}
{{- end }}
{{- if not (or $storage.url $redisSecret .Values.existingConfigSecret) }}
{{- fail "config.storage.backend redis needs the Redis URL: set redis.existingSecret (a Secret with redis://...), or config.storage.url" }}
{{- end }}
{{- else }}
{{- if $redisSecret }}
{{- fail "redis.existingSecret is set but config.storage.backend is not redis" }}
{{- end }}
{{- range $k := list "url" "timeout" "prefix" }}
{{- if get $storage $k }}
{{- fail (printf "config.storage.%s is only used with config.storage.backend: redis" $k) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (not .Values.controlOnLoopback) (not .Values.existingConfigSecret) (not (include "ezthrottle.apiKeys" . | fromJson)) }}
{{- fail "the control port listens on the pod IP (for probes and Prometheus), and ezthrottle refuses that without API keys: set apiKeys, or generateApiKey: true" }}
{{- end }}
{{- if and .Values.controlOnLoopback (or .Values.serviceMonitor.enabled .Values.podMonitor.enabled) }}
{{- fail "controlOnLoopback: Prometheus cannot scrape a control port on 127.0.0.1; disable serviceMonitor/podMonitor or controlOnLoopback" }}
{{- end }}
{{- if eq .Values.mode "sidecar" }}
{{- if eq $src "none" }}
{{- fail "mode sidecar needs a CA that the app can trust: set ca.existingSecret, ca.cert + ca.key, or ca.generate.enabled" }}
{{- end }}
{{- if .Values.serviceMonitor.enabled }}
{{- fail "serviceMonitor selects the gateway Service; sidecars are scraped with podMonitor.enabled" }}
{{- end }}
{{- else }}
{{- $replicas := int .Values.gateway.replicaCount }}
{{- if and .Values.persistence.enabled (not $embedded) (gt $replicas 1) }}
{{- fail "persistence with several replicas: with config.storage.backend redis the state is in Redis, so disable persistence (one ReadWriteOnce volume cannot serve several pods)" }}
{{- end }}
{{- if and .Values.persistence.enabled $embedded (gt $replicas 1) }}
{{- fail "persistence with the embedded store needs gateway.replicaCount: 1 (the SQLite file has one owner); run more replicas without persistence (each then has its own store and its own share of every domain limit)" }}
{{- end }}
{{- if and (eq $src "none") (gt $replicas 1) }}
{{- fail "with several gateway replicas every pod would create its own CA: set ca.existingSecret, ca.cert + ca.key, or ca.generate.enabled" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.service.exposeControl) }}
{{- fail "serviceMonitor scrapes the Service's control port: set service.exposeControl: true (or use podMonitor)" }}
{{- end }}
{{- end }}
{{- end }}

{{/* --------------------------------------------------------- container */}}

{{/* The webhook secret's Secret name and key (empty name: none). */}}
{{- define "ezthrottle.webhookSecretName" -}}
{{- if .Values.webhookSecret.existingSecret }}{{ .Values.webhookSecret.existingSecret }}
{{- else if .Values.webhookSecret.value }}{{ printf "%s-webhook" (include "ezthrottle.fullname" .) }}
{{- end }}
{{- end }}

{{- define "ezthrottle.webhookSecretKey" -}}
{{- if .Values.webhookSecret.existingSecret }}{{ .Values.webhookSecret.existingSecretKey }}{{ else }}webhook-secret{{ end }}
{{- end }}

{{- define "ezthrottle.probe" -}}
{{- $p := .probe -}}
httpGet:
  path: {{ $p.path }}
  port: ezt-control
{{- with omit $p "enabled" "path" }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The ezthrottle container. Params: ctx (chart context), native (bool: a
native sidecar, i.e. an init container with restartPolicy: Always).
*/}}
{{- define "ezthrottle.container" -}}
{{- $ := .ctx }}
{{- $sidecar := eq $.Values.mode "sidecar" -}}
- name: ezthrottle
  image: {{ include "ezthrottle.image" $ | quote }}
  imagePullPolicy: {{ $.Values.image.pullPolicy }}
  {{- if .native }}
  restartPolicy: Always
  {{- end }}
  args:
    - run
    - --config
    - {{ include "ezthrottle.configDir" $ }}/ezthrottle.toml
  env:
    - name: EZTHROTTLE_DATA_DIR
      value: {{ include "ezthrottle.dataDir" $ }}
    - name: EZTHROTTLE_LOG
      value: {{ $.Values.log.level | quote }}
    - name: EZTHROTTLE_LOG_FORMAT
      value: {{ $.Values.log.format | quote }}
    {{- with include "ezthrottle.webhookSecretName" $ }}
    - name: EZTHROTTLE_WEBHOOK_SECRET
      valueFrom:
        secretKeyRef:
          name: {{ . }}
          key: {{ include "ezthrottle.webhookSecretKey" $ }}
    {{- end }}
    {{- with $.Values.storageEncryptionKey.existingSecret }}
    - name: EZTHROTTLE_STORAGE_KEY
      valueFrom:
        secretKeyRef:
          name: {{ . }}
          key: {{ $.Values.storageEncryptionKey.existingSecretKey }}
    {{- end }}
    {{- with ($.Values.redis | default dict).existingSecret }}
    - name: EZTHROTTLE_REDIS_URL
      valueFrom:
        secretKeyRef:
          name: {{ . }}
          key: {{ $.Values.redis.existingSecretKey }}
    {{- end }}
    {{- with $.Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- if not $sidecar }}
    - name: ezt-proxy
      containerPort: {{ $.Values.ports.proxy }}
      protocol: TCP
    {{- end }}
    - name: ezt-control
      containerPort: {{ $.Values.ports.control }}
      protocol: TCP
  {{- if not $.Values.controlOnLoopback }}
  {{- if $.Values.startupProbe.enabled }}
  startupProbe:
    {{- include "ezthrottle.probe" (dict "probe" $.Values.startupProbe) | nindent 4 }}
  {{- end }}
  {{- if $.Values.livenessProbe.enabled }}
  livenessProbe:
    {{- include "ezthrottle.probe" (dict "probe" $.Values.livenessProbe) | nindent 4 }}
  {{- end }}
  {{- if $.Values.readinessProbe.enabled }}
  readinessProbe:
    {{- include "ezthrottle.probe" (dict "probe" $.Values.readinessProbe) | nindent 4 }}
  {{- end }}
  {{- end }}
  {{- with $.Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $.Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: ezthrottle-config
      mountPath: {{ include "ezthrottle.configDir" $ }}
      readOnly: true
    {{- if ne (include "ezthrottle.ca.source" $) "none" }}
    - name: ezthrottle-ca
      mountPath: {{ include "ezthrottle.caDir" $ }}
      readOnly: true
    {{- end }}
    - name: ezthrottle-data
      mountPath: {{ include "ezthrottle.dataDir" $ }}
    - name: ezthrottle-tmp
      mountPath: /tmp
    {{- with $.Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/*
Volumes of the ezthrottle container. Params: ctx, dataVolume (a volume
source map for the data directory). Files are mode 0440 in the gateway (its
pod sets fsGroup) and 0444 in a sidecar (the app's pod may not).
*/}}
{{- define "ezthrottle.volumes" -}}
{{- $ := .ctx }}
{{- $mode := ternary 292 288 (eq $.Values.mode "sidecar") -}}
- name: ezthrottle-config
  {{- if include "ezthrottle.configInSecret" $ }}
  secret:
    secretName: {{ include "ezthrottle.configName" $ }}
    defaultMode: {{ $mode }}
    items:
      - key: ezthrottle.toml
        path: ezthrottle.toml
  {{- else }}
  configMap:
    name: {{ include "ezthrottle.configName" $ }}
    defaultMode: {{ $mode }}
    items:
      - key: ezthrottle.toml
        path: ezthrottle.toml
  {{- end }}
{{- if ne (include "ezthrottle.ca.source" $) "none" }}
- name: ezthrottle-ca
  secret:
    secretName: {{ include "ezthrottle.ca.secretName" $ }}
    defaultMode: {{ $mode }}
    items:
      - key: {{ include "ezthrottle.ca.certKey" $ }}
        path: ca.pem
      - key: {{ include "ezthrottle.ca.keyKey" $ }}
        path: ca.key
{{- end }}
- name: ezthrottle-data
  {{- toYaml .dataVolume | nindent 2 }}
- name: ezthrottle-tmp
  emptyDir:
    {{- with $.Values.tmpVolume.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- with $.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------ alerts */}}

{{/*
PromQL: domains whose waiting requests exceed prometheusRule.queueNearCapacity.ratio
of their queue_capacity. Per-domain queue_capacity overrides in config.limits.domains
get their own clause (exact names beat wildcards, longer wildcards beat shorter
ones, as in ezthrottle itself).
*/}}
{{- define "ezthrottle.rules.queueNearCapacity" -}}
{{- $ratio := float64 .Values.prometheusRule.queueNearCapacity.ratio }}
{{- $limits := .Values.config.limits | default dict }}
{{- $default := float64 ($limits.queue_capacity | default 10000) }}
{{- $domains := $limits.domains | default dict }}
{{- $override := false }}
{{- range $name, $d := $domains }}
{{- if and (kindIs "map" $d) (hasKey $d "queue_capacity") }}{{ $override = true }}{{ end }}
{{- end }}
{{- if not $override }}
ezthrottle_domain_waiting > {{ mulf $ratio $default }}
{{- else }}
{{- $exact := list }}
{{- $wild := list }}
{{- range $name := keys $domains | sortAlpha }}
{{- if hasPrefix "*." $name }}{{ $wild = append $wild $name }}{{ else }}{{ $exact = append $exact $name }}{{ end }}
{{- end }}
{{- $clauses := list }}
{{- $all := list }}
{{- range $name := $exact }}
{{- $d := get $domains $name | default dict }}
{{- $cap := float64 ((kindIs "map" $d) | ternary ($d.queue_capacity | default $default) $default) }}
{{- $clauses = append $clauses (printf "ezthrottle_domain_waiting{domain=\"%s\"} > %v" (lower $name) (mulf $ratio $cap)) }}
{{- $all = append $all (regexQuoteMeta (lower $name)) }}
{{- end }}
{{- range $name := $wild }}
{{- $d := get $domains $name | default dict }}
{{- $cap := float64 ((kindIs "map" $d) | ternary ($d.queue_capacity | default $default) $default) }}
{{- $suffix := trimPrefix "*" (lower $name) }}
{{- $pattern := printf ".+%s" (regexQuoteMeta $suffix) }}
{{- $excl := list }}
{{- range $e := $exact }}{{ $excl = append $excl (regexQuoteMeta (lower $e)) }}{{ end }}
{{- range $w := $wild }}
{{- if gt (len $w) (len $name) }}{{ $excl = append $excl (printf ".+%s" (regexQuoteMeta (trimPrefix "*" (lower $w)))) }}{{ end }}
{{- end }}
{{- if $excl }}
{{- $clauses = append $clauses (printf "ezthrottle_domain_waiting{domain=~`%s`, domain!~`%s`} > %v" $pattern (join "|" $excl) (mulf $ratio $cap)) }}
{{- else }}
{{- $clauses = append $clauses (printf "ezthrottle_domain_waiting{domain=~`%s`} > %v" $pattern (mulf $ratio $cap)) }}
{{- end }}
{{- $all = append $all $pattern }}
{{- end }}
{{- $clauses = append $clauses (printf "ezthrottle_domain_waiting{domain!~`%s`} > %v" (join "|" $all) (mulf $ratio $default)) }}
{{ join "\nor\n" $clauses }}
{{- end }}
{{- end }}

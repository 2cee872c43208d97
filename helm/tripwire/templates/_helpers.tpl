{{/* Names, truncated to 63 characters: the limit of a DNS label. */}}
{{- define "tripwire.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tripwire.fullname" -}}
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

{{- define "tripwire.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels of every object: its selector labels and these. */}}
{{- define "tripwire.metaLabels" -}}
helm.sh/chart: {{ include "tripwire.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tripwire
{{- end }}

{{/* Selector labels: immutable in a Deployment or StatefulSet, so they never carry a version. */}}
{{- define "tripwire.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tripwire.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: proxy
{{- end }}

{{- define "tripwire.labels" -}}
{{ include "tripwire.selectorLabels" . }}
{{ include "tripwire.metaLabels" . }}
{{- end }}

{{- define "tripwire.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tripwire.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "tripwire.redis.labels" -}}
{{ include "tripwire.redis.selectorLabels" . }}
{{ include "tripwire.metaLabels" . }}
{{- end }}

{{- define "tripwire.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tripwire.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tripwire.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* "true" when task state lives in Redis (an existing one or the bundled one), else empty. */}}
{{- define "tripwire.redis.on" -}}
{{- if or .Values.redis.url .Values.redis.enabled }}true{{ end }}
{{- end }}

{{/* The Redis URL without a password. */}}
{{- define "tripwire.redis.baseURL" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s-redis:6379/0" (include "tripwire.fullname" .) }}
{{- else }}
{{- .Values.redis.url }}
{{- end }}
{{- end }}

{{/* The Redis URL with the password, escaped for the URL's user-info part. */}}
{{- define "tripwire.redis.fullURL" -}}
{{- $url := include "tripwire.redis.baseURL" . }}
{{- if .Values.redis.password }}
{{- $escaped := urlquery .Values.redis.password | replace "+" "%20" }}
{{- urlJoin (set (urlParse $url) "userinfo" (printf ":%s" $escaped)) }}
{{- else }}
{{- $url }}
{{- end }}
{{- end }}

{{/* "true" when the Redis URL carries credentials, which then stay out of the ConfigMap. */}}
{{- define "tripwire.redis.secretURL" -}}
{{- if and (include "tripwire.redis.on" .) (or .Values.redis.password (urlParse (include "tripwire.redis.baseURL" .)).userinfo) }}true{{ end }}
{{- end }}

{{/* Environment variables the chart's Secret carries: name -> value. */}}
{{- define "tripwire.secretEnv" -}}
{{- $env := deepCopy .Values.secrets.env }}
{{- if include "tripwire.redis.secretURL" . }}
{{- $_ := set $env "TRIPWIRE_STATE__REDIS_URL" (include "tripwire.redis.fullURL" .) }}
{{- end }}
{{- if and .Values.redis.enabled .Values.redis.password }}
{{- $_ := set $env "REDIS_PASSWORD" .Values.redis.password }}
{{- end }}
{{- if .Values.metrics.token.value }}
{{- $_ := set $env "METRICS_TOKEN" .Values.metrics.token.value }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{/* The Secret the pods read their environment from, or empty when there is none. */}}
{{- define "tripwire.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else if ne (include "tripwire.secretEnv" .) "{}" }}
{{- include "tripwire.fullname" . }}
{{- end }}
{{- end }}

{{/* The Secret and key holding the metrics token, as "name key", or empty when there is none. */}}
{{- define "tripwire.metricsToken" -}}
{{- if .Values.metrics.token.existingSecret }}
{{- printf "%s %s" .Values.metrics.token.existingSecret .Values.metrics.token.key }}
{{- else if .Values.metrics.token.value }}
{{- printf "%s METRICS_TOKEN" (include "tripwire.fullname" .) }}
{{- end }}
{{- end }}

{{/* The Secret mounted under /etc/tripwire/jwt/, or empty when there is none. */}}
{{- define "tripwire.jwtSecretName" -}}
{{- if .Values.secrets.jwtExistingSecret }}
{{- .Values.secrets.jwtExistingSecret }}
{{- else if .Values.secrets.jwtKeys }}
{{- printf "%s-jwt" (include "tripwire.fullname" .) }}
{{- end }}
{{- end }}

{{/* tripwire.yaml: the user's config with the keys the chart owns laid over it. */}}
{{- define "tripwire.config" -}}
{{- $owned := dict
  "server" (dict "host" "0.0.0.0" "port" .Values.port)
  "telemetry" (dict "metrics_path" .Values.metrics.path)
  "policy_file" "/etc/tripwire/config/policy.yaml" }}
{{- if include "tripwire.metricsToken" . }}
{{- $_ := set $owned.telemetry "metrics_token_env" "METRICS_TOKEN" }}
{{- end }}
{{- if include "tripwire.redis.on" . }}
{{- $state := dict "backend" "redis" "redis_cluster" .Values.redis.cluster }}
{{- if not (include "tripwire.redis.secretURL" .) }}
{{- $_ := set $state "redis_url" (include "tripwire.redis.baseURL" .) }}
{{- end }}
{{- $_ := set $owned "state" $state }}
{{- end }}
{{- toYaml (mustMergeOverwrite (deepCopy .Values.config) $owned) }}
{{- end }}

{{/* Combinations of values the schema cannot express clearly; each fails with its remedy. */}}
{{- define "tripwire.validate" -}}
{{- $replicas := ternary .Values.autoscaling.maxReplicas .Values.replicaCount .Values.autoscaling.enabled }}
{{- if and (gt (int $replicas) 1) (not (include "tripwire.redis.on" .)) }}
{{- fail (printf "%d replicas need a shared Redis, or each would count only its own calls and the limits would not hold: set redis.url (or redis.enabled=true to try it out), or replicaCount=1" (int $replicas)) }}
{{- end }}
{{- if and .Values.metrics.token.value .Values.secrets.existingSecret }}
{{- fail "metrics.token.value goes into the chart's Secret, which secrets.existingSecret replaces: put the token in a Secret of yours and name it in metrics.token.existingSecret" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas is above autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.redis.url .Values.redis.enabled }}
{{- fail "set either redis.url (an existing Redis) or redis.enabled (the bundled one), not both" }}
{{- end }}
{{- if and .Values.redis.password (urlParse (include "tripwire.redis.baseURL" .)).userinfo }}
{{- fail "redis.url already carries credentials: remove them from the URL and keep the password in redis.password" }}
{{- end }}
{{- if and .Values.redis.cluster .Values.redis.enabled }}
{{- fail "the bundled Redis is a single server: redis.cluster needs redis.url pointing at a Redis Cluster" }}
{{- end }}
{{- if and .Values.secrets.existingSecret (or .Values.secrets.env .Values.redis.password (include "tripwire.redis.secretURL" .)) }}
{{- fail (printf "with secrets.existingSecret, keep every secret variable in %s, the Redis URL with its password as TRIPWIRE_STATE__REDIS_URL: leave secrets.env and redis.password empty and put no password in redis.url" .Values.secrets.existingSecret) }}
{{- end }}
{{- if and .Values.secrets.jwtExistingSecret .Values.secrets.jwtKeys }}
{{- fail "set either secrets.jwtKeys or secrets.jwtExistingSecret, not both" }}
{{- end }}
{{- if or (hasKey .Values.config "policy") (hasKey .Values.config "policy_file") }}
{{- fail "set the policy with the chart's `policy` value, not config.policy or config.policy_file" }}
{{- end }}
{{- end }}

{{- /*
Shared snippets. Every helper that describes one component takes
(dict "root" $ "component" "ingest"); the rest take the root context.
*/ -}}

{{/* The chart's name (nameOverride replaces it). */}}
{{- define "queueflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-queueflow, or the release name alone when it already says queueflow. */}}
{{- define "queueflow.fullname" -}}
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

{{/*
A component's object name, <fullname>-<component>. The fullname is shortened before the
suffix is added, so two components never truncate to the same name. "max" (default 63) is
lower for StatefulSets: their pods carry a controller-revision-hash label of name + 11 chars.
*/}}
{{- define "queueflow.component" -}}
{{- $max := .max | default 63 | int -}}
{{- $prefix := include "queueflow.fullname" .root | trunc (int (sub $max (add1 (len .component)))) | trimSuffix "-" -}}
{{- printf "%s-%s" $prefix .component }}
{{- end }}

{{/* name-version, as the helm.sh/chart label wants it. */}}
{{- define "queueflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select a component's pods; never change them (selectors are immutable). Takes the
component dict, or the root context for release-wide objects.
*/}}
{{- define "queueflow.selectorLabels" -}}
{{- $ctx := ternary . (dict "root" .) (hasKey . "root") -}}
app.kubernetes.io/name: {{ include "queueflow.name" $ctx.root }}
app.kubernetes.io/instance: {{ $ctx.root.Release.Name }}
{{- with $ctx.component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* Every object's labels: the selector labels plus chart, version and manager. */}}
{{- define "queueflow.labels" -}}
{{- $ctx := ternary . (dict "root" .) (hasKey . "root") -}}
{{ include "queueflow.selectorLabels" $ctx }}
helm.sh/chart: {{ include "queueflow.chart" $ctx.root }}
app.kubernetes.io/version: {{ $ctx.root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $ctx.root.Release.Service }}
app.kubernetes.io/part-of: queueflow
{{- end }}

{{- define "queueflow.componentLabels" -}}
{{ include "queueflow.labels" . }}
{{- end }}

{{/* Labels of a component's pods: selector labels, part-of, and the component's podLabels. */}}
{{- define "queueflow.podLabels" -}}
{{ include "queueflow.selectorLabels" . }}
app.kubernetes.io/part-of: queueflow
{{- with omit (.podLabels | default dict) "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/component" "app.kubernetes.io/part-of" }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
An image reference: registry (global.imageRegistry replaces each image's own) / repository,
then @digest when given, else :tag. Call with (dict "root" $ "image" .Values.image "default"
.Chart.AppVersion).
*/}}
{{- define "queueflow.imageRef" -}}
{{- $registry := ((.root.Values.global).imageRegistry) | default .image.registry -}}
{{- $repository := .image.repository -}}
{{- if $registry }}{{ $repository = printf "%s/%s" $registry $repository }}{{ end -}}
{{- if .image.digest }}
{{- printf "%s@%s" $repository .image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (.image.tag | default .default | toString) }}
{{- end }}
{{- end }}

{{- define "queueflow.image" -}}
{{- include "queueflow.imageRef" (dict "root" . "image" .Values.image "default" .Chart.AppVersion) }}
{{- end }}

{{/* imagePullSecrets of every pod the chart makes: global ones, then the chart's own. */}}
{{- define "queueflow.imagePullSecrets" -}}
{{- $names := list -}}
{{- range concat (((.Values.global).imagePullSecrets) | default list) .Values.imagePullSecrets }}
{{- if kindIs "string" . }}{{ $names = append $names . }}{{ else }}{{ $names = append $names .name }}{{ end }}
{{- end }}
{{- with $names | uniq }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end }}

{{- define "queueflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "queueflow.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Where the bundled servers are reached: a fully qualified name, valid from any namespace. */}}
{{- define "queueflow.serviceHost" -}}
{{- printf "%s.%s.svc.%s" (include "queueflow.component" .) .root.Release.Namespace .root.Values.clusterDomain }}
{{- end }}

{{/*
The Secret and key holding the bundled servers' passwords: an existing Secret (GitOps: stable
across renders) or the chart's own.
*/}}
{{- define "queueflow.redisPasswordSecret" -}}
{{- .Values.redis.auth.existingSecret | default (include "queueflow.fullname" .) }}
{{- end }}

{{- define "queueflow.redisPasswordKey" -}}
{{- if .Values.redis.auth.existingSecret }}{{ .Values.redis.auth.existingSecretPasswordKey }}{{ else }}redis-password{{ end }}
{{- end }}

{{- define "queueflow.postgresPasswordSecret" -}}
{{- .Values.postgresql.auth.existingSecret | default (include "queueflow.fullname" .) }}
{{- end }}

{{- define "queueflow.postgresPasswordKey" -}}
{{- if .Values.postgresql.auth.existingSecret }}{{ .Values.postgresql.auth.existingSecretPasswordKey }}{{ else }}postgres-password{{ end }}
{{- end }}

{{/*
REDIS_URL. With the bundled Redis it is put together from the password by Kubernetes'
$(VAR) expansion, so the chart never has to read a Secret it does not own.
*/}}
{{- define "queueflow.env.redis" -}}
{{- if .Values.redis.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "queueflow.redisPasswordSecret" . }}
      key: {{ include "queueflow.redisPasswordKey" . }}
- name: REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "queueflow.serviceHost" (dict "root" . "component" "redis")) | quote }}
{{- else }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalRedis.existingSecret | default (include "queueflow.fullname" .) }}
      key: {{ if .Values.externalRedis.existingSecret }}{{ .Values.externalRedis.existingSecretKey }}{{ else }}redis-url{{ end }}
{{- end }}
{{- end }}

{{/*
DATABASE_URL; call with (dict "root" $ "secret" <name> "key" <key>) to read it from a given
Secret instead (the migration Job's own credentials).
*/}}
{{- define "queueflow.env.database" -}}
{{- $root := .root -}}
{{- if .secret }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- else if $root.Values.postgresql.enabled }}
{{- $pg := $root.Values.postgresql }}
- name: DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "queueflow.postgresPasswordSecret" $root }}
      key: {{ include "queueflow.postgresPasswordKey" $root }}
- name: DATABASE_URL
  value: {{ printf "postgresql://%s:$(DATABASE_PASSWORD)@%s:5432/%s" $pg.auth.username (include "queueflow.serviceHost" (dict "root" $root "component" "postgresql")) $pg.auth.database | quote }}
{{- else }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.externalDatabase.existingSecret | default (include "queueflow.fullname" $root) }}
      key: {{ if $root.Values.externalDatabase.existingSecret }}{{ $root.Values.externalDatabase.existingSecretKey }}{{ else }}database-url{{ end }}
{{- end }}
{{- end }}

{{/*
The environment of one QueueFlow service: only the URLs it uses (ingest never holds the
database's credentials; reporting reads Redis only for its answers' freshness), the settings
from the ConfigMap, extraEnv.
*/}}
{{- define "queueflow.env" -}}
{{- $root := .root -}}
{{- if has .component (list "ingest" "worker" "reporting") }}
{{- include "queueflow.env.redis" $root }}
{{- end }}
{{- if eq .component "reporting" }}
{{- include "queueflow.env.statsTokens" $root }}
{{- end }}
{{- with $root.Values.userIdKey.existingSecret }}
{{- if eq $.component "ingest" }}
- name: QUEUEFLOW_USER_ID_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $root.Values.userIdKey.existingSecretKey }}
{{- end }}
{{- end }}
{{- $db := $root.Values.externalDatabase -}}
{{- if and (eq .component "reporting") (not $root.Values.postgresql.enabled) $db.existingSecret $db.existingSecretReportingKey }}
{{- include "queueflow.env.database" (dict "root" $root "secret" $db.existingSecret "key" $db.existingSecretReportingKey) }}
{{- else if has .component (list "reporting" "worker") }}
{{- include "queueflow.env.database" (dict "root" $root) }}
{{- end }}
{{- if and (eq .component "reporting") (not $root.Values.postgresql.enabled) $db.existingSecret $db.existingSecretReadKey }}
- name: DATABASE_READ_URL
  valueFrom:
    secretKeyRef:
      name: {{ $db.existingSecret }}
      key: {{ $db.existingSecretReadKey }}
{{- end }}
{{- if eq .component "worker" }}
# One consumer name per pod: a replacement pod reclaims the old one's entries.
- name: QUEUEFLOW_CONSUMER
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}
{{- with $root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* QUEUEFLOW_STATS_TOKENS for reporting and the helm test pod, when tokens are on. */}}
{{- define "queueflow.env.statsTokens" -}}
{{- $t := .Values.statsTokens -}}
{{- if or $t.existingSecret $t.generate }}
- name: QUEUEFLOW_STATS_TOKENS
  valueFrom:
    secretKeyRef:
      name: {{ $t.existingSecret | default (include "queueflow.fullname" .) }}
      key: {{ if $t.existingSecret }}{{ $t.existingSecretKey }}{{ else }}stats-tokens{{ end }}
{{- end }}
{{- end }}

{{/* Whether the migration Job runs as a hook before install: only an external database exists then. */}}
{{- define "queueflow.migrateBeforeInstall" -}}
{{- if and .Values.migrations.job.enabled (not .Values.postgresql.enabled) }}true{{ end }}
{{- end }}

{{/*
Pod and container security contexts: the values' own, so platforms that assign UIDs
(OpenShift) can drop runAsUser/fsGroup with null.
*/}}
{{- define "queueflow.securityContext" -}}
{{- with . }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/* Scheduling fields of a pod from a values block (nodeSelector, tolerations, ...). */}}
{{- define "queueflow.scheduling" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- range $field := list "nodeSelector" "tolerations" "affinity" "topologySpreadConstraints" }}
{{- with (index $ $field) }}
{{ $field }}:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- end }}

{{/* Whether a monitoring object is made: asked for, and its API served (or forced). */}}
{{- define "queueflow.wantApi" -}}
{{- if and .enabled (or .force (.root.Capabilities.APIVersions.Has .api)) }}true{{ end }}
{{- end }}

{{/*
Redis's maxmemory: redis.maxmemory, else 75% of the container's memory limit (AOF rewrites
and client buffers need the rest), in bytes. The schema allows only Mi/Gi limits.
*/}}
{{- define "queueflow.redisMaxmemory" -}}
{{- if .maxmemory }}
{{- .maxmemory }}
{{- else }}
{{- $limit := .resources.limits.memory | toString -}}
{{- $number := regexFind "^[0-9]+" $limit | int64 -}}
{{- $unit := ternary 1073741824 1048576 (hasSuffix "Gi" $limit) -}}
{{- div (mul $number $unit 3) 4 }}
{{- end }}
{{- end }}

{{/*
The hook annotations of the migration Job and its companions; call with (dict "root" $
"weight" n "done" true) for a companion deleted once the phase succeeded (Helm deletes
hook-succeeded hooks after every hook of the phase has run).
*/}}
{{- define "queueflow.migrateHook" -}}
{{- if include "queueflow.migrateBeforeInstall" .root }}
helm.sh/hook: pre-install,pre-upgrade
{{- else }}
helm.sh/hook: post-install,pre-upgrade
# Argo CD runs this after the sync instead (its own hooks replace Helm's): before the first
# sync there is no PostgreSQL to migrate.
argocd.argoproj.io/hook: PostSync
argocd.argoproj.io/hook-delete-policy: BeforeHookCreation
{{- end }}
helm.sh/hook-weight: {{ .weight | quote }}
helm.sh/hook-delete-policy: before-hook-creation{{ if .done }},hook-succeeded{{ end }}
{{- end }}

{{/*
What the pods' URLs are made of, hashed: a changed external URL or Secret name rolls the pods.
(Generated passwords never change; a changed existing Secret's content cannot be seen here.)
*/}}
{{- define "queueflow.secretChecksum" -}}
{{- $v := .Values -}}
{{- list $v.externalRedis $v.externalDatabase $v.redis.auth $v.redis.enabled $v.postgresql.auth $v.postgresql.enabled $v.statsTokens | toJson | sha256sum }}
{{- end }}

{{/* The routes of the Ingress and the HTTPRoute, in one place: (path, match, component). */}}
{{- define "queueflow.routes" -}}
{{- $routes := list
  (dict "path" "/event" "match" "Exact" "component" "ingest")
  (dict "path" "/events" "match" "Exact" "component" "ingest")
  (dict "path" "/tracker.js" "match" "Exact" "component" "ingest")
  (dict "path" "/stats" "match" "Prefix" "component" "reporting")
  (dict "path" "/sites" "match" "Exact" "component" "reporting") -}}
{{- if .Values.ingress.dashboard -}}
{{- $routes = concat $routes (list
  (dict "path" "/" "match" "Exact" "component" "reporting")
  (dict "path" "/dashboard" "match" "Prefix" "component" "reporting")) -}}
{{- end -}}
{{- toJson $routes -}}
{{- end -}}

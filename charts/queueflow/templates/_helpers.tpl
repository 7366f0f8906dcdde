{{/* Names: <release>-queueflow, or the release name alone when it already says queueflow. */}}
{{- define "queueflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

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

{{/* A component's name: <fullname>-ingest, -reporting, -worker, -redis, -postgresql. */}}
{{- define "queueflow.component" -}}
{{- printf "%s-%s" (include "queueflow.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "queueflow.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "queueflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: queueflow
{{- end }}

{{/* Selector labels of one component; call with (dict "root" $ "component" "ingest"). */}}
{{- define "queueflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "queueflow.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "queueflow.componentLabels" -}}
{{ include "queueflow.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "queueflow.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "queueflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "queueflow.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret and key holding REDIS_URL / DATABASE_URL. */}}
{{- define "queueflow.redisSecret" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.existingSecret }}
{{- .Values.externalRedis.existingSecret }}
{{- else }}
{{- include "queueflow.fullname" . }}
{{- end }}
{{- end }}

{{- define "queueflow.redisSecretKey" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.existingSecret }}
{{- .Values.externalRedis.existingSecretKey }}
{{- else }}redis-url{{ end }}
{{- end }}

{{- define "queueflow.databaseSecret" -}}
{{- if and (not .Values.postgresql.enabled) .Values.externalDatabase.existingSecret }}
{{- .Values.externalDatabase.existingSecret }}
{{- else }}
{{- include "queueflow.fullname" . }}
{{- end }}
{{- end }}

{{- define "queueflow.databaseSecretKey" -}}
{{- if and (not .Values.postgresql.enabled) .Values.externalDatabase.existingSecret }}
{{- .Values.externalDatabase.existingSecretKey }}
{{- else }}database-url{{ end }}
{{- end }}

{{/* Environment of every QueueFlow container: URLs from Secrets, the rest from the ConfigMap. */}}
{{- define "queueflow.env" -}}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "queueflow.redisSecret" . }}
      key: {{ include "queueflow.redisSecretKey" . }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "queueflow.databaseSecret" . }}
      key: {{ include "queueflow.databaseSecretKey" . }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "queueflow.envFrom" -}}
- configMapRef:
    name: {{ include "queueflow.fullname" . }}
{{- end }}

{{- define "queueflow.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsUser }}
fsGroup: {{ .runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "queueflow.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Whether a monitoring object is made: asked for, and its API served (or forced). */}}
{{- define "queueflow.wantApi" -}}
{{- if and .enabled (or .force (.root.Capabilities.APIVersions.Has .api)) }}true{{ end }}
{{- end }}

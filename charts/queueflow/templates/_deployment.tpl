{{/*
The shapes the three QueueFlow services share; each component's own file calls them with
(dict "root" $ "component" "ingest").
*/}}

{{/*
One QueueFlow Deployment. The image's entrypoint is `queueflow`; the command is spelled out so
that what runs is readable here (and the chart test runs exactly this command locally).
*/}}
{{- define "queueflow.deployment" -}}
{{- $root := .root -}}
{{- $c := .component -}}
{{- $v := index $root.Values $c -}}
{{- $scaled := or (and $v.autoscaling $v.autoscaling.enabled) (and $v.keda $v.keda.enabled) -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "queueflow.component" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "queueflow.labels" . | nindent 4 }}
spec:
  {{- if not $scaled }}
  replicas: {{ $v.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "queueflow.selectorLabels" . | nindent 6 }}
  {{- if ne $c "worker" }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 25%
  {{- end }}
  template:
    metadata:
      labels:
        {{- include "queueflow.podLabels" (dict "root" $root "component" $c "podLabels" $v.podLabels) | nindent 8 }}
      annotations:
        # Environment variables are read once at start: a changed setting or URL rolls the pods.
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        checksum/secret: {{ include "queueflow.secretChecksum" $root }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "queueflow.serviceAccountName" $root }}
      automountServiceAccountToken: false
      # Kubernetes' service-link variables (<SERVICE>_PORT=...) could collide with QUEUEFLOW_*.
      enableServiceLinks: false
      {{- with include "queueflow.imagePullSecrets" $root | trim }}{{ . | nindent 6 }}{{ end }}
      securityContext:
        {{- include "queueflow.securityContext" $root.Values.podSecurityContext | nindent 8 }}
      {{- if eq $c "worker" }}
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      {{- else }}
      terminationGracePeriodSeconds: {{ add $v.preStopSleepSeconds 30 }}
      {{- end }}
      {{- with include "queueflow.scheduling" $v | trim }}{{ . | nindent 6 }}{{ end }}
      containers:
        - name: {{ $c }}
          image: {{ include "queueflow.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: [queueflow]
          args: [{{ $c }}, --port, "{{ $root.Values.containerPort }}"]
          ports:
            - name: http
              containerPort: {{ $root.Values.containerPort }}
              protocol: TCP
          env:
            {{- include "queueflow.env" . | trim | nindent 12 }}
          envFrom:
            - configMapRef:
                name: {{ include "queueflow.fullname" $root }}
          startupProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 2
            failureThreshold: 30
          livenessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 3
          readinessProbe:
            httpGet: {path: /readyz, port: http}
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 2
          {{- if ne $c "worker" }}
          lifecycle:
            # Keep serving while the endpoint is removed from Services and load balancers.
            preStop:
              sleep:
                seconds: {{ $v.preStopSleepSeconds }}
          {{- end }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- include "queueflow.securityContext" $root.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- with $root.Values.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- with $root.Values.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end }}

{{/* The Service of one QueueFlow component (the worker's serves only /metrics and probes). */}}
{{- define "queueflow.service" -}}
{{- $root := .root -}}
{{- $worker := eq .component "worker" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "queueflow.component" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "queueflow.labels" . | nindent 4 }}
spec:
  type: {{ ternary "ClusterIP" $root.Values.service.type $worker }}
  selector:
    {{- include "queueflow.selectorLabels" . | nindent 4 }}
  ports:
    - name: http
      port: {{ ternary $root.Values.containerPort $root.Values.service.port $worker }}
      targetPort: http
      protocol: TCP
{{- end }}

{{/* A CPU HorizontalPodAutoscaler (plus autoscaling.metrics) when autoscaling.enabled. */}}
{{- define "queueflow.hpa" -}}
{{- $v := index .root.Values .component -}}
{{- if $v.autoscaling.enabled }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "queueflow.component" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "queueflow.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "queueflow.component" . }}
  minReplicas: {{ $v.autoscaling.minReplicas }}
  maxReplicas: {{ $v.autoscaling.maxReplicas }}
  metrics:
    {{- with $v.autoscaling.targetCPUUtilizationPercentage }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
    {{- with $v.autoscaling.metrics }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.autoscaling.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/*
A PodDisruptionBudget, only where more than one pod can run (over one replica it would block
node drains). Unhealthy pods may always be evicted: during a dependency outage every pod is
unready, and the budget must not hold a drain hostage to it.
*/}}
{{- define "queueflow.pdb" -}}
{{- $v := index .root.Values .component -}}
{{- $fewest := $v.replicaCount -}}
{{- if and $v.autoscaling $v.autoscaling.enabled }}{{ $fewest = $v.autoscaling.minReplicas }}{{ end -}}
{{- if and $v.keda $v.keda.enabled }}{{ $fewest = max $v.keda.minReplicas 1 }}{{ end -}}
{{- if and $v.pdb.enabled (gt (int $fewest) 1) }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "queueflow.component" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "queueflow.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ $v.pdb.maxUnavailable }}
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "queueflow.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}

{{/*
A component's NetworkPolicy: who may open connections to it ("from": a list of peers, or
none for anyone) on "port", and, with networkPolicy.egress.enabled, where it may connect:
DNS plus the servers named in "to" (redis, postgresql, http) and networkPolicy.egress.extra.
"annotations" makes it a hook beside the hook pod it is for.
*/}}
{{- define "queueflow.networkPolicy" -}}
{{- $root := .root -}}
{{- $np := $root.Values.networkPolicy -}}
{{- $egress := and $np.egress.enabled (not (empty .to)) -}}
{{- if $np.enabled }}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "queueflow.component" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "queueflow.labels" . | nindent 4 }}
  {{- with .annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  podSelector:
    matchLabels:
      {{- include "queueflow.selectorLabels" . | nindent 6 }}
  policyTypes: [Ingress{{ if $egress }}, Egress{{ end }}]
  {{- if .port }}
  ingress:
    - ports:
        - port: {{ .port }}
          protocol: TCP
      {{- with .from }}
      from:
        {{- toYaml . | nindent 8 }}
      {{- end }}
  {{- else }}
  ingress: []
  {{- end }}
  {{- if $egress }}
  egress:
    - to:
        {{- toYaml $np.egress.dns.to | nindent 8 }}
      ports:
        {{- range $np.egress.dns.ports }}
        - {port: {{ . }}, protocol: UDP}
        - {port: {{ . }}, protocol: TCP}
        {{- end }}
    {{- range $server := .to }}
    {{- if eq $server "http" }}
    - to:
        - podSelector:
            matchLabels:
              {{- include "queueflow.selectorLabels" (dict "root" $root) | nindent 14 }}
      ports:
        - {port: http, protocol: TCP}
    {{- else if (index $root.Values $server).enabled }}
    - to:
        - podSelector:
            matchLabels:
              {{- include "queueflow.selectorLabels" (dict "root" $root "component" $server) | nindent 14 }}
      ports:
        - {port: {{ ternary 6379 5432 (eq $server "redis") }}, protocol: TCP}
    {{- else }}
    {{- $external := index $np.egress (printf "%sTo" $server) }}
    - ports:
        - {port: {{ $external.port }}, protocol: TCP}
      {{- with $external.peers }}
      to:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    {{- end }}
    {{- end }}
    {{- with $np.egress.extra }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Peers of this release's pods of the given components, for a NetworkPolicy's "from". */}}
{{- define "queueflow.peers" -}}
{{- range .components }}
- podSelector:
    matchLabels:
      {{- include "queueflow.selectorLabels" (dict "root" $.root "component" .) | nindent 6 }}
{{- end }}
{{- end }}

{{/*
The Service of a bundled server (redis, postgresql); with "headless" its StatefulSet's
governing Service, for stable per-pod DNS names. Call with (dict "root" $ "component" "redis"
"port" 6379 "headless" true).
*/}}
{{- define "queueflow.serverService" -}}
{{- if (index .root.Values .component).enabled }}
{{- $ctx := dict "root" .root "component" .component }}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "queueflow.component" (dict "root" .root "component" (ternary (printf "%s-headless" .component) .component .headless)) }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "queueflow.labels" $ctx | nindent 4 }}
spec:
  {{- if .headless }}
  clusterIP: None
  publishNotReadyAddresses: true
  {{- end }}
  selector:
    {{- include "queueflow.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: {{ .component }}
      port: {{ .port }}
      targetPort: {{ .component }}
{{- end }}
{{- end }}

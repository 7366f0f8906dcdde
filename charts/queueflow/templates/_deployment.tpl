{{/*
One QueueFlow Deployment; call with (dict "root" $ "component" "ingest").
The image's entrypoint is `queueflow`; the command is spelled out so that what runs is
readable here (and the chart test runs exactly this command locally).
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
  labels:
    {{- include "queueflow.componentLabels" . | nindent 4 }}
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
        {{- include "queueflow.selectorLabels" . | nindent 8 }}
        app.kubernetes.io/part-of: queueflow
      annotations:
        # A config change rolls the pods: environment variables are read once at start.
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "queueflow.serviceAccountName" $root }}
      automountServiceAccountToken: false
      # Kubernetes' service-link variables (<SERVICE>_PORT=...) could collide with QUEUEFLOW_*.
      enableServiceLinks: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "queueflow.podSecurityContext" (dict "runAsUser" $root.Values.image.runAsUser) | nindent 8 }}
      {{- if eq $c "worker" }}
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      {{- else }}
      terminationGracePeriodSeconds: {{ add $v.preStopSleepSeconds 30 }}
      {{- end }}
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
            {{- include "queueflow.env" $root | nindent 12 }}
            {{- if eq $c "worker" }}
            # One consumer name per pod: a replacement pod reclaims the old one's entries.
            - name: QUEUEFLOW_CONSUMER
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            {{- end }}
          envFrom:
            {{- include "queueflow.envFrom" $root | nindent 12 }}
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
            {{- include "queueflow.containerSecurityContext" . | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

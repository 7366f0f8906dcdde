{{/* The Service of one QueueFlow component (the worker's serves only /metrics and probes). */}}
{{- define "queueflow.service" -}}
{{- $root := .root -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "queueflow.component" . }}
  labels:
    {{- include "queueflow.componentLabels" . | nindent 4 }}
spec:
  type: {{ if eq .component "worker" }}ClusterIP{{ else }}{{ $root.Values.service.type }}{{ end }}
  selector:
    {{- include "queueflow.selectorLabels" . | nindent 4 }}
  ports:
    - name: http
      port: {{ if eq .component "worker" }}{{ $root.Values.containerPort }}{{ else }}{{ $root.Values.service.port }}{{ end }}
      targetPort: http
      protocol: TCP
{{- end }}

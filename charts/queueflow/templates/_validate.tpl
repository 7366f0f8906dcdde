{{/* Every check of the values that the schema cannot express, in one place (templates/validate.yaml). */}}
{{- define "queueflow.validate" -}}
{{- $v := .Values -}}
{{- if le (float64 $v.worker.terminationGracePeriodSeconds) (float64 $v.config.shutdownTimeout) }}
{{- fail "worker.terminationGracePeriodSeconds must exceed config.shutdownTimeout: a worker needs that long to commit and ack its batch" }}
{{- end }}
{{- if and $v.worker.autoscaling.enabled $v.worker.keda.enabled }}
{{- fail "worker.autoscaling.enabled and worker.keda.enabled are exclusive: two controllers would fight over the replica count" }}
{{- end }}
{{- if and $v.config.redisCluster $v.redis.enabled }}
{{- fail "config.redisCluster needs an external Redis Cluster: the bundled Redis is one node. Set redis.enabled=false and point externalRedis.url (or externalRedis.existingSecret) at one of the cluster's nodes" }}
{{- end }}
{{- if and (gt (int $v.config.redisWaitReplicas) 0) $v.redis.enabled }}
{{- fail "config.redisWaitReplicas needs an external Redis whose primaries have replicas: the bundled Redis has none, so every append would wait and be refused" }}
{{- end }}
{{- if and (gt (int $v.config.redisWaitReplicas) 0) (lt (float64 $v.config.redisTimeoutS) 0.4) }}
{{- fail "config.redisWaitReplicas needs config.redisTimeoutS of at least 0.4: WAIT gets half of it" }}
{{- end }}
{{- if and $v.config.redisCluster $v.worker.keda.enabled (ne (int $v.worker.keda.databaseIndex) 0) }}
{{- fail "worker.keda.databaseIndex must be 0 with config.redisCluster: a Redis Cluster has only database 0" }}
{{- end }}
{{- if and $v.worker.keda.enabled (not $v.redis.enabled) (not $v.worker.keda.redisAddress) }}
{{- fail "worker.keda with an external Redis needs worker.keda.redisAddress (host:port), and worker.keda.passwordSecret when it has a password" }}
{{- end }}
{{- if and (not $v.redis.enabled) (not $v.externalRedis.url) (not $v.externalRedis.existingSecret) }}
{{- fail "redis.enabled=false needs externalRedis.url or externalRedis.existingSecret" }}
{{- end }}
{{- if and (not $v.postgresql.enabled) (not $v.externalDatabase.url) (not $v.externalDatabase.existingSecret) }}
{{- fail "postgresql.enabled=false needs externalDatabase.url or externalDatabase.existingSecret" }}
{{- end }}
{{- range $c := list "ingest" "worker" }}
{{- $a := (index $v $c).autoscaling }}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- fail (printf "%s.autoscaling.minReplicas must not exceed maxReplicas" $c) }}
{{- end }}
{{- end }}
{{- if and $v.worker.keda.enabled (gt (int $v.worker.keda.minReplicas) (int $v.worker.keda.maxReplicas)) }}
{{- fail "worker.keda.minReplicas must not exceed maxReplicas" }}
{{- end }}
{{- if and $v.ingress.enabled (not $v.ingress.hosts) }}
{{- fail "ingress.enabled needs at least one entry in ingress.hosts (host: \"\" matches any)" }}
{{- end }}
{{- if and $v.redis.enabled (not $v.redis.maxmemory) (not (regexMatch "^[0-9]+(Mi|Gi)$" (toString (($v.redis.resources).limits).memory))) }}
{{- fail "redis.maxmemory is needed unless redis.resources.limits.memory is given in Mi or Gi (maxmemory is then 75% of it)" }}
{{- end }}
{{- end }}

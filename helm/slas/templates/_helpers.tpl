{{/* Names, labels and the pieces every workload shares. */}}

{{/* The chart name, truncated to a DNS label. */}}
{{- define "slas.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's base name: the release name, or release-chart when the release name lacks the chart's.
Kept to 40 characters so that "<base>-train-<index>" (a pod's hostname) stays a DNS label. */}}
{{- define "slas.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "slas.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select a component's pods. Call with (dict "ctx" $ "component" "train"). */}}
{{- define "slas.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slas.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "slas.labels" -}}
helm.sh/chart: {{ include "slas.chart" .ctx }}
{{ include "slas.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: slas
{{- end -}}

{{/* The slas image: repository:tag, tag defaulting to the chart's appVersion. */}}
{{- define "slas.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Object names. */}}
{{/* The training run's Job (and its Service, ConfigMap): <base>-train for the release's own run, <base>-job-<id>
for a job submitted with `slas jobs submit --backend kubernetes`, so that several runs share one release. */}}
{{- define "slas.trainName" -}}
{{- if .Values.run.jobId -}}
{{ include "slas.fullname" . }}-job-{{ .Values.run.jobId }}
{{- else -}}
{{ include "slas.fullname" . }}-train
{{- end -}}
{{- end -}}
{{- define "slas.mlflowName" -}}{{ include "slas.fullname" . }}-mlflow{{- end -}}
{{- define "slas.uiName" -}}{{ include "slas.fullname" . }}-ui{{- end -}}
{{- define "slas.rewardName" -}}{{ include "slas.fullname" . }}-reward{{- end -}}
{{- define "slas.postgresqlName" -}}{{ include "slas.fullname" . }}-postgresql{{- end -}}

{{- define "slas.checkpointsClaim" -}}
{{- default (printf "%s-checkpoints" (include "slas.fullname" .)) .Values.persistence.checkpoints.existingClaim -}}
{{- end -}}
{{- define "slas.modelsClaim" -}}
{{- default (printf "%s-models" (include "slas.fullname" .)) .Values.persistence.models.existingClaim -}}
{{- end -}}
{{- define "slas.mlflowArtifactsClaim" -}}
{{- default (printf "%s-mlflow-artifacts" (include "slas.fullname" .)) .Values.mlflow.artifacts.persistence.existingClaim -}}
{{- end -}}

{{/* The tracking URI every slas process logs to: the chart's server, else mlflow.externalUri. */}}
{{- define "slas.trackingUri" -}}
{{- if .Values.mlflow.enabled -}}
{{- printf "http://%s:%d" (include "slas.mlflowName" .) (int .Values.mlflow.port) -}}
{{- else -}}
{{- required "mlflow.externalUri is required when mlflow.enabled is false" .Values.mlflow.externalUri -}}
{{- end -}}
{{- end -}}

{{/* The PostgreSQL password Secret (the chart's PostgreSQL). */}}
{{- define "slas.postgresqlPasswordSecret" -}}
{{- required "postgresql.passwordSecret.name is required when postgresql.enabled is true (a Secret you create)" .Values.postgresql.passwordSecret.name -}}
{{- end -}}

{{/* Environment that gives a process a PostgreSQL URL as VAR: from the Secret (name, key) when a name is set,
else composed from the chart's PostgreSQL password (database db), else the error message. Kubernetes expands
$(SLAS_PG_PASSWORD) because that variable is defined first. Call with
(dict "ctx" $ "var" "SLAS_DATABASE_URL" "secret" .Values.store.databaseUrlSecret "db" "slas" "what" "store.databaseUrlSecret.name"). */}}
{{- define "slas.databaseEnv" -}}
{{- $v := .ctx.Values -}}
{{- if .secret.name }}
- name: {{ .var }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret.name }}
      key: {{ .secret.key }}
{{- else if $v.postgresql.enabled }}
- name: SLAS_PG_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "slas.postgresqlPasswordSecret" .ctx }}
      key: {{ $v.postgresql.passwordSecret.key }}
- name: {{ .var }}
  value: {{ printf "postgresql+psycopg://%s:$(SLAS_PG_PASSWORD)@%s:5432/%s" $v.postgresql.username (include "slas.postgresqlName" .ctx) .db | quote }}
{{- else }}
{{- fail (printf "%s is required unless postgresql.enabled is true" .what) }}
{{- end }}
{{- end -}}

{{/* Environment of every slas process: where state, tracking, weights and caches are; the job store. */}}
{{- define "slas.commonEnv" -}}
- name: SLAS_HOME
  value: {{ .Values.persistence.checkpoints.mountPath | quote }}
- name: MLFLOW_TRACKING_URI
  value: {{ include "slas.trackingUri" . | quote }}
- name: HF_HOME
  value: {{ printf "%s/huggingface" .Values.persistence.models.mountPath | quote }}
- name: HF_HUB_OFFLINE
  value: "1"
- name: TRANSFORMERS_OFFLINE
  value: "1"
- name: HOME
  value: /home/slas
- name: XDG_CACHE_HOME
  value: /home/slas/.cache
- name: TRITON_CACHE_DIR
  value: /home/slas/.cache/triton
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
- name: PYTHONUNBUFFERED
  value: "1"
{{- include "slas.databaseEnv" (dict "ctx" . "var" "SLAS_DATABASE_URL" "secret" .Values.store.databaseUrlSecret "db" "slas" "what" "store.databaseUrlSecret.name") }}
{{- end -}}

{{/* The writable emptyDirs a read-only root filesystem needs (/tmp and $HOME with its caches). */}}
{{- define "slas.scratchVolumes" -}}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
{{- end -}}
{{- define "slas.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/slas
{{- end -}}

{{/* The reward token (optional remote reward server) for the server and its clients. */}}
{{- define "slas.rewardTokenEnv" -}}
{{- if .Values.rewardServer.enabled }}
- name: SLAS_REWARD_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ required "rewardServer.tokenSecret.name is required when rewardServer.enabled is true (a Secret you create)" .Values.rewardServer.tokenSecret.name }}
      key: {{ .Values.rewardServer.tokenSecret.key }}
{{- end }}
{{- end -}}

{{/* The chart's name, truncated to a label's 63 characters. */}}
{{- define "pyobs-service.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The objects' name: the release name, with the chart's unless it already holds it. */}}
{{- define "pyobs-service.fullname" -}}
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

{{/* pyobs's service.name: pyobs.serviceName, else the release name. */}}
{{- define "pyobs-service.serviceName" -}}
{{- default .Release.Name .Values.pyobs.serviceName }}
{{- end }}

{{- define "pyobs-service.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "pyobs-service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pyobs-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pyobs-service.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "pyobs-service.selectorLabels" . }}
app.kubernetes.io/version: {{ include "pyobs-service.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pyobs
{{- end }}

{{- define "pyobs-service.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pyobs-service.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret that holds the metrics bearer token (the app's and the monitor's). */}}
{{- define "pyobs-service.metricsSecretName" -}}
{{- default (printf "%s-metrics" (include "pyobs-service.fullname" .)) .Values.metrics.auth.existingSecret }}
{{- end }}

{{/* The port /metrics is served on: its own (metrics.port) or the app's. */}}
{{- define "pyobs-service.metricsPortName" -}}
{{- if .Values.metrics.port }}metrics{{ else }}http{{ end }}
{{- end }}

{{- define "pyobs-service.logstashUrl" -}}
{{- default (printf "http://pyobs-ls-http.%s.svc:8080" .Values.stackNamespace) .Values.logs.logstash.url }}
{{- end }}

{{- define "pyobs-service.elasticsearchUrl" -}}
{{- default (printf "http://pyobs-es-http.%s.svc:9200" .Values.stackNamespace) .Values.logs.elasticsearch.url }}
{{- end }}

{{- define "pyobs-service.otlpEndpoint" -}}
{{- default (printf "http://jaeger.%s.svc:4318" .Values.stackNamespace) .Values.tracing.otlpEndpoint }}
{{- end }}

{{/* PYOBS_EXCLUDED_PATHS: pyobs.excludedPaths, then the probe paths (quoted as regexes). */}}
{{- define "pyobs-service.excludedPaths" -}}
{{- $paths := list }}
{{- range .Values.pyobs.excludedPaths }}{{ $paths = append $paths . }}{{ end }}
{{- if .Values.probes.excludeFromTelemetry }}
{{- range $probe := list .Values.probes.liveness .Values.probes.readiness .Values.probes.startup }}
{{- $quoted := regexQuoteMeta $probe.path }}
{{- if not (has $quoted $paths) }}{{ $paths = append $paths $quoted }}{{ end }}
{{- end }}
{{- end }}
{{- join "," $paths }}
{{- end }}

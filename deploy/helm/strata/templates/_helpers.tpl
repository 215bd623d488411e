{{/*
Chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "strata.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name when it already contains the
chart name. Truncated to 52 characters so that "-headless" still fits in 63, and
so that StatefulSet pod names (with the ordinal) stay valid.
*/}}
{{- define "strata.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of the headless Service that gives each broker pod its DNS name. */}}
{{- define "strata.headlessName" -}}
{{- printf "%s-headless" (include "strata.fullname" .) }}
{{- end }}

{{/* chart label value: <name>-<version>. */}}
{{- define "strata.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "strata.labels" -}}
helm.sh/chart: {{ include "strata.chart" . }}
{{ include "strata.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the broker pods; never change them on upgrade. */}}
{{- define "strata.selectorLabels" -}}
app.kubernetes.io/name: {{ include "strata.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "strata.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "strata.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference. */}}
{{- define "strata.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Refuses values the broker cannot run with; called from every workload template.
values.schema.json refuses them too, but helm's schema errors do not say why.
*/}}
{{- define "strata.validate" -}}
{{- if gt (int .Values.replicas) 1 }}
{{- fail (printf "replicas is %d, but Strata does not yet run as a multi-broker cluster: each replica would be an independent broker with its own topics that knows nothing of the others. Set replicas to 1." (int .Values.replicas)) }}
{{- end }}
{{- range $key := list "data_dir" "kafka_listen" "http_listen" "advertised_listener" }}
{{- if hasKey $.Values.config $key }}
{{- fail (printf "config.%s is set by the chart (data_dir is the volume, the listeners match the container ports and Services, advertised_listener is per pod); remove it from values" $key) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The broker's config: values.config plus the keys the chart owns.
*/}}
{{- define "strata.config" -}}
{{- $owned := dict "data_dir" "/var/lib/strata" "kafka_listen" "0.0.0.0:9092" "http_listen" "0.0.0.0:9644" }}
{{- $config := merge $owned (deepCopy (.Values.config | default dict)) }}
{{- include "strata.toml" $config }}
{{- end }}

{{/*
Renders a dict as TOML: scalars (strings quoted) and arrays of scalars at the top
level, then each map as a [table] of scalars. Null values are left out, empty
tables too. Keys are sorted, so the output (and the checksum) is stable.
Deeper nesting fails: the broker's config has one level of tables.
*/}}
{{- define "strata.toml" -}}
{{- $root := . }}
{{- range $key, $value := $root }}
{{- if not (or (kindIs "map" $value) (kindIs "invalid" $value)) }}
{{ include "strata.tomlKey" $key }} = {{ include "strata.tomlValue" (list $key $value) }}
{{- end }}
{{- end }}
{{- range $table, $entries := $root }}
{{- if and (kindIs "map" $entries) (gt (len $entries) 0) }}

[{{ include "strata.tomlKey" $table }}]
{{- range $key, $value := $entries }}
{{- if kindIs "map" $value }}
{{- fail (printf "config.%s.%s: nested tables are not supported in strata.toml" $table $key) }}
{{- else if not (kindIs "invalid" $value) }}
{{ include "strata.tomlKey" $key }} = {{ include "strata.tomlValue" (list (printf "%s.%s" $table $key) $value) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* A bare TOML key; anything else is refused rather than quoted. */}}
{{- define "strata.tomlKey" -}}
{{- if not (regexMatch "^[A-Za-z0-9_-]+$" .) }}
{{- fail (printf "config key %q is not a bare TOML key (letters, digits, _ and -)" .) }}
{{- end }}
{{- . }}
{{- end }}

{{/*
A TOML value from (list path value). JSON encodings of strings, booleans,
numbers and arrays of those are valid TOML; numbers from YAML arrive as float64
and toJson prints integral ones without a fraction or exponent.
*/}}
{{- define "strata.tomlValue" -}}
{{- $path := index . 0 }}
{{- $value := index . 1 }}
{{- if kindIs "slice" $value }}
{{- range $value }}
{{- if or (kindIs "map" .) (kindIs "slice" .) (kindIs "invalid" .) }}
{{- fail (printf "config.%s: only arrays of scalars are supported in strata.toml" $path) }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $value }}
{{- end }}

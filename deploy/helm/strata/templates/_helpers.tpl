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

{{/* Whether the brokers form a cluster (more than one replica). */}}
{{- define "strata.clustered" -}}
{{- if gt (int .Values.replicas) 1 }}true{{ end }}
{{- end }}

{{/* Whether the chart runs its own etcd. */}}
{{- define "strata.ownEtcd" -}}
{{- if and (include "strata.clustered" .) (not .Values.cluster.etcd.endpoints) }}true{{ end }}
{{- end }}

{{/* Name of the chart's etcd StatefulSet, and of its headless Service. */}}
{{- define "strata.etcdName" -}}
{{- printf "%s-etcd" (include "strata.fullname" .) }}
{{- end }}
{{- define "strata.etcdHeadlessName" -}}
{{- printf "%s-etcd-headless" (include "strata.fullname" .) }}
{{- end }}

{{/* Labels that select the etcd pods (never the brokers': another name). */}}
{{- define "strata.etcdSelectorLabels" -}}
app.kubernetes.io/name: {{ include "strata.name" . }}-etcd
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: etcd
{{- end }}

{{/* The etcd client URLs the brokers use: every member of the chart's etcd, or the given ones. */}}
{{- define "strata.etcdEndpoints" -}}
{{- if .Values.cluster.etcd.endpoints }}
{{- toJson .Values.cluster.etcd.endpoints }}
{{- else }}
{{- $urls := list }}
{{- $sts := include "strata.etcdName" . }}
{{- $domain := printf "%s.%s.svc.%s" (include "strata.etcdHeadlessName" .) .Release.Namespace .Values.clusterDomain }}
{{- range $i := until (int .Values.cluster.etcd.replicas) }}
{{- $urls = append $urls (printf "http://%s-%d.%s:2379" $sts $i $domain) }}
{{- end }}
{{- toJson $urls }}
{{- end }}
{{- end }}

{{/*
Refuses values the broker cannot run with; called from every workload template.
values.schema.json refuses some of them too, but helm's schema errors do not say why.
*/}}
{{- define "strata.validate" -}}
{{- with .Values.security }}
{{- if and .listener.enabled (not .tlsSecret) }}
{{- fail "security.listener.enabled needs security.tlsSecret: a Secret with tls.crt, tls.key and ca.crt (e.g. from a cert-manager Certificate)" }}
{{- end }}
{{- if and .admin.https (not .tlsSecret) }}
{{- fail "security.admin.https needs security.tlsSecret" }}
{{- end }}
{{- if and .interBroker.enabled (or (not .listener.enabled) (not .interBroker.passwordSecret)) }}
{{- fail "security.interBroker.enabled needs security.listener.enabled and security.interBroker.passwordSecret" }}
{{- end }}
{{- if and (not .plaintextListener) .listener.enabled (not .interBroker.enabled) }}
{{- fail "security.plaintextListener is false: brokers reach each other on the secure listener, so enable security.interBroker (a super user and its password Secret)" }}
{{- end }}
{{- if and (not .plaintextListener) (not .listener.enabled) }}
{{- fail "security.plaintextListener is false and security.listener.enabled is false: the brokers would have no Kafka listener" }}
{{- end }}
{{- end }}
{{- if hasKey (.Values.config | default dict) "auth" }}
{{- fail "config.auth is set by the chart from the security values; set those instead" }}
{{- end }}
{{- $replicas := int .Values.replicas }}
{{- $rf := int .Values.cluster.replicationFactor }}
{{- $isr := int .Values.cluster.minInsyncReplicas }}
{{- if gt $replicas 1 }}
{{- if gt $rf $replicas }}
{{- fail (printf "replicas is %d but cluster.replicationFactor is %d: every partition needs %d brokers, so topics could not be created. Set replicas to at least %d, or lower cluster.replicationFactor." $replicas $rf $rf $rf) }}
{{- end }}
{{- if gt $isr $rf }}
{{- fail (printf "cluster.minInsyncReplicas (%d) is above cluster.replicationFactor (%d): no acks=all write could ever succeed." $isr $rf) }}
{{- end }}
{{- $tls := .Values.cluster.etcd.tls }}
{{- range .Values.cluster.etcd.endpoints }}
{{- if and (hasPrefix "https://" .) (not $tls.existingSecret) }}
{{- fail (printf "cluster.etcd.endpoints has %s but cluster.etcd.tls.existingSecret is empty: the broker needs the CA that signed etcd's certificate." .) }}
{{- end }}
{{- if not (or (hasPrefix "https://" .) (hasPrefix "http://" .)) }}
{{- fail (printf "cluster.etcd.endpoints: %q must be a URL (http://host:2379 or https://host:2379)" .) }}
{{- end }}
{{- end }}
{{- if and (not .Values.cluster.etcd.endpoints) (lt (int .Values.cluster.etcd.replicas) 1) }}
{{- fail "cluster.etcd.replicas must be at least 1 (3 or 5 in production) when cluster.etcd.endpoints is empty" }}
{{- end }}
{{- $clusterConfig := .Values.config.cluster | default dict }}
{{- range $key := list "etcd_endpoints" "name" "default_replication_factor" "rack" "broker_id" "etcd_username" "etcd_password" "etcd_ca_file" "etcd_cert_file" "etcd_key_file" }}
{{- if hasKey $clusterConfig $key }}
{{- fail (printf "config.cluster.%s is set by the chart from the cluster values (broker_id is each pod's ordinal); remove it from config" $key) }}
{{- end }}
{{- end }}
{{- if hasKey (.Values.config.log | default dict) "min_insync_replicas" }}
{{- fail "config.log.min_insync_replicas is set by the chart from cluster.minInsyncReplicas; set that instead" }}
{{- end }}
{{- $controlled := int (index $clusterConfig "controlled_shutdown_timeout_ms" | default 30000) }}
{{- $drain := int (.Values.config.shutdown_timeout_ms | default 10000) }}
{{- if le (mul (int .Values.terminationGracePeriodSeconds) 1000) (add $controlled $drain) }}
{{- fail (printf "terminationGracePeriodSeconds (%d s) must exceed the broker's controlled shutdown (%d ms) plus shutdown_timeout_ms (%d ms), or the kubelet kills brokers before their leaderships have moved" (int .Values.terminationGracePeriodSeconds) $controlled $drain) }}
{{- end }}
{{- else if .Values.config.cluster }}
{{- fail "config.cluster is set but replicas is 1 or 0: a single broker runs without etcd. Set replicas to 3 for a cluster." }}
{{- end }}
{{- range $key := list "data_dir" "kafka_listen" "http_listen" "advertised_listener" }}
{{- if hasKey $.Values.config $key }}
{{- fail (printf "config.%s is set by the chart (data_dir is the volume, the listeners match the container ports and Services, advertised_listener is per pod); remove it from values" $key) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The broker's config: values.config plus the keys the chart owns; in a cluster,
the [cluster] section and min.insync.replicas from the cluster values.
*/}}
{{/*
The secure listener as an inline TOML array for STRATA_LISTENERS: its
advertised name is the pod's own, which only the environment knows.
*/}}
{{- define "strata.listeners" -}}
{{- with .Values.security.listener -}}
[{ name = "secure", listen = "0.0.0.0:{{ .port }}", advertised = "$(POD_NAME).{{ include "strata.headlessName" $ }}.{{ $.Release.Namespace }}.svc.{{ $.Values.clusterDomain }}:{{ .port }}", protocol = "{{ .protocol }}", tls_cert_file = "/etc/strata/tls/tls.crt", tls_key_file = "/etc/strata/tls/tls.key"{{ if .requireClientCertificates }}, tls_client_ca_file = "/etc/strata/tls/ca.crt"{{ end }}, sasl_mechanisms = {{ .saslMechanisms | toJson }} }]
{{- end -}}
{{- end }}

{{- define "strata.config" -}}
{{- $owned := dict "data_dir" "/var/lib/strata" "kafka_listen" "0.0.0.0:9092" "http_listen" "0.0.0.0:9644" }}
{{- if include "strata.clustered" . }}
{{- $cluster := dict "etcd_endpoints" (include "strata.etcdEndpoints" . | fromJsonArray) "name" .Values.cluster.name "default_replication_factor" (int .Values.cluster.replicationFactor) }}
{{- with .Values.cluster.etcd.tls }}
{{- if .existingSecret }}
{{- $_ := set $cluster "etcd_ca_file" (printf "/etc/strata/etcd-tls/%s" .caKey) }}
{{- if and .certKey .keyKey }}
{{- $_ := set $cluster "etcd_cert_file" (printf "/etc/strata/etcd-tls/%s" .certKey) }}
{{- $_ := set $cluster "etcd_key_file" (printf "/etc/strata/etcd-tls/%s" .keyKey) }}
{{- end }}
{{- end }}
{{- end }}
{{- $_ := set $owned "cluster" $cluster }}
{{- $_ := set $owned "log" (dict "min_insync_replicas" (int .Values.cluster.minInsyncReplicas)) }}
{{- end }}
{{- with .Values.security }}
{{- if not .plaintextListener }}
{{- $_ := set $owned "kafka_listen" "" }}
{{- end }}
{{- $auth := dict }}
{{- if .authorizer }}
{{- $_ := set $auth "authorizer" true }}
{{- end }}
{{- if .superUsers }}
{{- $_ := set $auth "super_users" .superUsers }}
{{- end }}
{{- if .usersSecret }}
{{- $_ := set $auth "bootstrap_users_file" "/etc/strata/users/users.toml" }}
{{- end }}
{{- if .interBroker.enabled }}
{{- $_ := set $auth "inter_broker_listener_name" "secure" }}
{{- $_ := set $auth "inter_broker_user" .interBroker.user }}
{{- $_ := set $auth "inter_broker_password_file" "/etc/strata/inter-broker/password" }}
{{- $_ := set $auth "inter_broker_sasl_mechanism" (first .listener.saslMechanisms) }}
{{- $_ := set $auth "inter_broker_tls_ca_file" "/etc/strata/tls/ca.crt" }}
{{- end }}
{{- if .admin.requireAuth }}
{{- $_ := set $auth "http_require_auth" true }}
{{- end }}
{{- if .admin.tokenSecret }}
{{- $_ := set $auth "http_token_file" "/etc/strata/admin-tokens/tokens" }}
{{- end }}
{{- if .admin.https }}
{{- $_ := set $auth "http_tls_cert_file" "/etc/strata/tls/tls.crt" }}
{{- $_ := set $auth "http_tls_key_file" "/etc/strata/tls/tls.key" }}
{{- end }}
{{- if $auth }}
{{- $_ := set $owned "auth" $auth }}
{{- end }}
{{- end }}
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

{{/*
Names, labels and the few derived values every template shares.
*/}}

{{- define "pii-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's resources, at most 63 characters (DNS label). */}}
{{- define "pii-gateway.fullname" -}}
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

{{- define "pii-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The image tag: image.tag, else the chart's appVersion. */}}
{{- define "pii-gateway.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "pii-gateway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository (include "pii-gateway.imageTag" .) .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "pii-gateway.imageTag" .) }}
{{- end }}
{{- end }}

{{- define "pii-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pii-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The recommended labels (kubernetes.io/docs/concepts/overview/working-with-objects/common-labels). */}}
{{- define "pii-gateway.labels" -}}
helm.sh/chart: {{ include "pii-gateway.chart" . }}
{{ include "pii-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ include "pii-gateway.imageTag" . | replace "+" "_" | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pii-gateway
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "pii-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pii-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Label that lets a pod through the NetworkPolicy to the API port (the test pod has it). */}}
{{- define "pii-gateway.clientLabel" -}}
{{- printf "%s-client" (include "pii-gateway.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{/* The Secret with the master key and the upstream key: the user's, or the chart's. */}}
{{- define "pii-gateway.secretName" -}}
{{- .Values.existingSecret | default (include "pii-gateway.fullname" .) }}
{{- end }}

{{/* The ConfigMap mounted as the policies folder, if any: the user's, or the chart's. */}}
{{- define "pii-gateway.policiesConfigMap" -}}
{{- if .Values.policies.existingConfigMap }}
{{- .Values.policies.existingConfigMap }}
{{- else if .Values.policies.files }}
{{- printf "%s-policies" (include "pii-gateway.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The master key for the chart's Secret: masterKey, else the one already in the cluster (so an upgrade
keeps it), else 32 new random bytes. `helm template` cannot look into a cluster and generates a new key
every time: GitOps users set masterKey or existingSecret.
*/}}
{{- define "pii-gateway.masterKey" -}}
{{- if .Values.masterKey }}
{{- .Values.masterKey }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "pii-gateway.fullname" .) }}
{{- $data := dig "data" (dict) ($existing | default (dict)) }}
{{- if hasKey $data .Values.secretKeys.masterKey }}
{{- index $data .Values.secretKeys.masterKey | b64dec }}
{{- else }}
{{- randBytes 32 }}
{{- end }}
{{- end }}
{{- end }}

{{/* True when the gateway serves HTTPS on its API port. */}}
{{- define "pii-gateway.scheme" -}}
{{- if .Values.tls.enabled }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}

{{/* Where the chart mounts things in the container. */}}
{{- define "pii-gateway.configDir" -}}/etc/pii-gateway/config{{- end }}
{{- define "pii-gateway.policiesDir" -}}/etc/pii-gateway/policies{{- end }}
{{- define "pii-gateway.tlsDir" -}}/etc/pii-gateway/tls{{- end }}
{{- define "pii-gateway.keysDir" -}}/etc/pii-gateway/keys{{- end }}

{{/*
config.yaml: the user's settings (values `config`) plus the ones the chart manages. The schema refuses
the managed keys in `config`, so nothing here overrides what a user wrote.
*/}}
{{- define "pii-gateway.configYaml" -}}
{{- $config := deepCopy .Values.config }}
{{- $metrics := deepCopy (get $config "metrics" | default (dict)) }}
{{- $_ := set $metrics "enabled" .Values.metrics.enabled }}
{{- $_ := set $config "metrics" $metrics }}
{{- if include "pii-gateway.policiesConfigMap" . }}
{{- $_ := set $config "policies_dir" (include "pii-gateway.policiesDir" .) }}
{{- end }}
{{- if .Values.apiKeys.existingSecret }}
{{- $_ := set $config "keys_file" (printf "%s/%s" (include "pii-gateway.keysDir" .) .Values.apiKeys.key) }}
{{- end }}
{{- if not (hasKey $config "shutdown_grace_seconds") }}
{{- $_ := set $config "shutdown_grace_seconds" (max 0 (sub (sub (int .Values.terminationGracePeriodSeconds) (int .Values.preStopSleepSeconds)) 2)) }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* Refuse value combinations the schema cannot express, with a message that says what to do. */}}
{{- define "pii-gateway.validate" -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "tls.enabled needs tls.existingSecret: a kubernetes.io/tls Secret with tls.crt and tls.key" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled (not .Values.networkPolicy.upstreams) }}
{{- fail "networkPolicy.enabled needs networkPolicy.upstreams: where the LLM upstream lives ({cidr, ports}), or the gateway can reach nothing" }}
{{- end }}
{{- if and .Values.persistence.enabled (has "ReadWriteOnce" .Values.persistence.accessModes) (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) }}
{{- fail "persistence with a ReadWriteOnce claim serves one replica only: set replicaCount=1 and autoscaling.enabled=false, or use transcripts.dsnSecret (PostgreSQL) for several replicas" }}
{{- end }}
{{- if and (not .Values.metrics.enabled) (or .Values.metrics.serviceMonitor.enabled .Values.metrics.prometheusRule.enabled) }}
{{- fail "metrics.serviceMonitor and metrics.prometheusRule need metrics.enabled: without it there is no /metrics to scrape" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must not be below autoscaling.minReplicas" }}
{{- end }}
{{- $grace := get .Values.config "shutdown_grace_seconds" | default 0 | float64 }}
{{- if gt (addf $grace (float64 .Values.preStopSleepSeconds)) (float64 .Values.terminationGracePeriodSeconds) }}
{{- fail "config.shutdown_grace_seconds + preStopSleepSeconds must fit in terminationGracePeriodSeconds, or Kubernetes kills the pod in the middle of its drain" }}
{{- end }}
{{- end }}

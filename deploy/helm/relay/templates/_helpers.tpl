{{/* Chart name, overridable. */}}
{{- define "relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name: the release name, prefixed to the chart name unless it already contains it.
*/}}
{{- define "relay.fullname" -}}
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

{{- define "relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "relay.labels" -}}
helm.sh/chart: {{ include "relay.chart" . }}
{{ include "relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: media
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "relay.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Name of the Secret holding the control-plane bearer token. */}}
{{- define "relay.tokenSecretName" -}}
{{- if .Values.control.token.value }}
{{- printf "%s-control-token" (include "relay.fullname" .) }}
{{- else }}
{{- required "control.token.existingSecret or control.token.value is required: the control plane listens beyond loopback and the relay refuses to do that without a token" .Values.control.token.existingSecret }}
{{- end }}
{{- end }}

{{/*
Termination grace period: the preStop sleep, then the relay's drain deadline, then a margin for
ending the remaining calls and exiting. Kubernetes sends SIGKILL when it runs out, which would
cut calls without an end cause, so it must exceed preStop + drain deadline.
*/}}
{{- define "relay.terminationGracePeriodSeconds" -}}
{{- $auto := add (int .Values.lifecycle.preStopSleepSeconds) (int .Values.relay.drainDeadlineSeconds) (int .Values.lifecycle.exitMarginSeconds) }}
{{- if .Values.lifecycle.terminationGracePeriodSeconds }}
{{- if le (int .Values.lifecycle.terminationGracePeriodSeconds) (add (int .Values.lifecycle.preStopSleepSeconds) (int .Values.relay.drainDeadlineSeconds)) }}
{{- fail (printf "lifecycle.terminationGracePeriodSeconds (%v) must exceed lifecycle.preStopSleepSeconds + relay.drainDeadlineSeconds (%v)" .Values.lifecycle.terminationGracePeriodSeconds (add (int .Values.lifecycle.preStopSleepSeconds) (int .Values.relay.drainDeadlineSeconds))) }}
{{- end }}
{{- .Values.lifecycle.terminationGracePeriodSeconds }}
{{- else }}
{{- $auto }}
{{- end }}
{{- end }}

{{/* UDP ports one call holds: one per enabled WhatsApp family plus the internal leg. */}}
{{- define "relay.portsPerCall" -}}
{{- $n := 1 }}
{{- if ne (toString .Values.media.whatsappV4) "none" }}{{ $n = add $n 1 }}{{ end }}
{{- if ne (toString .Values.media.whatsappV6) "none" }}{{ $n = add $n 1 }}{{ end }}
{{- $n }}
{{- end }}

{{/*
One advertised-address env var. `from` picks the source: hostIP / podIP (downward API),
annotation (a pod annotation, e.g. copied from a node label by an admission policy), value (a
literal), none (unset: the relay advertises its bind address). auto = hostIP with hostNetwork,
podIP without.
*/}}
{{- define "relay.advertiseEnv" -}}
{{- $from := .spec.from }}
{{- if eq $from "auto" }}{{ $from = ternary "hostIP" "podIP" .hostNetwork }}{{ end }}
{{- if eq $from "hostIP" -}}
- name: {{ .name }}
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- else if eq $from "podIP" -}}
- name: {{ .name }}
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- else if eq $from "annotation" -}}
- name: {{ .name }}
  valueFrom:
    fieldRef:
      fieldPath: {{ printf "metadata.annotations['%s']" (required (printf "%s: from=annotation needs an annotation key" .name) .spec.annotation) }}
{{- else if eq $from "value" -}}
- name: {{ .name }}
  value: {{ required (printf "%s: from=value needs a value" .name) .spec.value | quote }}
{{- else if ne $from "none" }}
{{- fail (printf "%s: from must be auto, hostIP, podIP, annotation, value or none (got %q)" .name $from) }}
{{- end }}
{{- end }}
